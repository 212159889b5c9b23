"""The upload pipeline: sequential bytes in, an S3 object out, with bounded memory."""

from sftp_gateway.upload.stream import StreamResult, UploadStream

__all__ = ["StreamResult", "UploadStream"]
