"""Real data: Fashion-MNIST (Debian), ImageFolder directories, foolbox's ImageNet samples, class names.

Nothing is downloaded at run time; see :mod:`.resources` for where each piece comes from.
"""

from ulsam_deploy.data.fashion_mnist import CLASSES as FASHION_MNIST_CLASSES
from ulsam_deploy.data.fashion_mnist import FashionMNIST, read_idx
from ulsam_deploy.data.folder import ImageFolder, export_fashion_mnist_folder, find_classes
from ulsam_deploy.data.images import Preprocess, load_image_uint8
from ulsam_deploy.data.imagenet import foolbox_imagenet_samples, imagenet_preprocess, load_foolbox_imagenet
from ulsam_deploy.data.resources import (MissingResource, fashion_mnist_dir, foolbox_data_dir, imagenet_class_names,
                        mv2_weights_path)

__all__ = [
    "FASHION_MNIST_CLASSES", "FashionMNIST", "ImageFolder", "MissingResource", "Preprocess",
    "export_fashion_mnist_folder", "fashion_mnist_dir", "find_classes", "foolbox_data_dir",
    "foolbox_imagenet_samples", "imagenet_class_names", "imagenet_preprocess", "load_foolbox_imagenet",
    "load_image_uint8", "mv2_weights_path", "read_idx",
]
