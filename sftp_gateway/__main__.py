from sftp_gateway.cli import main

main()
