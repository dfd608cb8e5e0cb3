from ulsam_deploy.cli import run

run()
