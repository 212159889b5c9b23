"""sftp-gateway: SFTP in front, S3 multipart behind, a catalog and events beside."""

__version__ = "0.1.0"
