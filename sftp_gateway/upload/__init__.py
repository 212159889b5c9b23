"""The upload pipeline: sequential bytes in, an S3 object out, with bounded memory."""

from sftp_gateway.upload.budget import ByteBudget, Lease, Owner, ServerBusy
from sftp_gateway.upload.checkpoint import Checkpoint
from sftp_gateway.upload.sender import PartSender
from sftp_gateway.upload.stream import StreamResult, UploadStream

__all__ = [
    "ByteBudget",
    "Checkpoint",
    "Lease",
    "Owner",
    "PartSender",
    "ServerBusy",
    "StreamResult",
    "UploadStream",
]
