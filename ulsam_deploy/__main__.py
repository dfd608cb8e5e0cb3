from ulsam_deploy._entry import main

main()
