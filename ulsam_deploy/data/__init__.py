"""Real data: one image discovery and preprocessing path (:mod:`.sources`, :mod:`.images`), Fashion-MNIST
(Debian), foolbox's ImageNet samples, class names, and the ImageFolder training set.

Nothing is downloaded at run time; see :mod:`.resources` for where each piece comes from. Names load
lazily: the training data set (torch) is only imported when used.
"""

from ulsam_deploy._lazy import lazy_exports

_EXPORTS = {
    "FASHION_MNIST_CLASSES": "ulsam_deploy.data.fashion_mnist", "FashionMNIST": "ulsam_deploy.data.datasets",
    "read_idx": "ulsam_deploy.data.fashion_mnist",
    "ImageFolder": "ulsam_deploy.data.datasets", "export_fashion_mnist_folder": "ulsam_deploy.data.datasets",
    "find_classes": "ulsam_deploy.data.datasets",
    "Preprocess": "ulsam_deploy.data.images", "read_image": "ulsam_deploy.data.images",
    "ImageSet": "ulsam_deploy.data.sources", "load_images": "ulsam_deploy.data.sources",
    "random_images": "ulsam_deploy.data.sources", "resolve_preprocess": "ulsam_deploy.data.sources",
    "foolbox_imagenet_samples": "ulsam_deploy.data.imagenet", "imagenet_preprocess": "ulsam_deploy.data.imagenet",
    "load_foolbox_imagenet": "ulsam_deploy.data.imagenet",
    "MissingResource": "ulsam_deploy.data.resources", "fashion_mnist_dir": "ulsam_deploy.data.resources",
    "foolbox_data_dir": "ulsam_deploy.data.resources", "imagenet_class_names": "ulsam_deploy.data.resources",
    "mv2_weights_path": "ulsam_deploy.data.resources",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
