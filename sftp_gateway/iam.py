"""Least-privilege IAM: the policies `sftp-gateway iam-policy` prints for the config.

Only the actions the code calls, on the narrowest resources:

- gateway (storage/s3.py, gc.py, events/publisher.py): HeadObject/GetObject/CopyObject
  source (s3:GetObject); PutObject, CreateMultipartUpload, UploadPart,
  CompleteMultipartUpload, CopyObject target (s3:PutObject); DeleteObject;
  AbortMultipartUpload; ListParts (s3:ListMultipartUploadParts); PutObjectTagging (the
  `sha256` tag, also on a PutObject with tags) and GetObjectTagging (STAT of a
  compressed object, copying tags on a rename), all on
  `BUCKET/PREFIX/*`; ListObjectsV2 (s3:ListBucket, only with an s3:prefix under PREFIX);
  ListMultipartUploads (s3:ListBucketMultipartUploads: no s3:prefix key exists for it);
  SendMessageBatch (sqs:SendMessage); KMS data keys when storage.kms_key_id is set.
- notifier (notifier/worker.py): ReceiveMessage, DeleteMessage, ChangeMessageVisibility.
- both: sqs:GetQueueAttributes, read-only, for `check-config --live` and Lambda's
  event source mapping.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from sftp_gateway.config import Settings

Role = Literal["gateway", "notifier"]
ROLES: tuple[Role, ...] = ("gateway", "notifier")
VERSION = "2012-10-17"
_KEY_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$|^mrk-\w+$")

OBJECT_ACTIONS = [
    "s3:AbortMultipartUpload",
    "s3:DeleteObject",
    "s3:GetObject",
    "s3:GetObjectTagging",
    "s3:ListMultipartUploadParts",
    "s3:PutObject",
    "s3:PutObjectTagging",
]
GATEWAY_SQS_ACTIONS = ["sqs:GetQueueAttributes", "sqs:SendMessage"]
NOTIFIER_SQS_ACTIONS = [
    "sqs:ChangeMessageVisibility",
    "sqs:DeleteMessage",
    "sqs:GetQueueAttributes",
    "sqs:ReceiveMessage",
]


def partition(region: str | None) -> str:
    """aws, aws-cn or aws-us-gov: the first field of every ARN."""
    region = region or ""
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


def bucket_arn(settings: Settings) -> str:
    return f"arn:{partition(settings.storage.region)}:s3:::{settings.storage.bucket}"


def objects_arn(settings: Settings) -> str:
    """Every key the gateway may touch: `BUCKET/PREFIX/*` (the whole bucket without one)."""
    prefix = settings.storage.prefix
    return f"{bucket_arn(settings)}/{prefix}/*" if prefix else f"{bucket_arn(settings)}/*"


def queue_arn(settings: Settings) -> str | None:
    """The queue's ARN from its URL (`https://sqs.REGION.amazonaws.com/ACCOUNT/NAME`).

    None without a queue; `*` stands for a region or account the URL does not name.
    """
    url = settings.events.queue_url
    if not url:
        return None
    host, _, path = url.split("://", 1)[-1].partition("/")
    parts = [p for p in path.split("/") if p]
    name = parts[-1] if parts else "*"
    account = parts[-2] if len(parts) >= 2 and parts[-2].isdigit() else "*"
    labels = host.split(".")
    region = settings.events.region or (
        labels[1] if len(labels) > 2 and labels[0] == "sqs" else None
    )
    return f"arn:{partition(region)}:sqs:{region or '*'}:{account}:{name}"


def _kms_statement(settings: Settings) -> dict[str, Any] | None:
    """Data keys for SSE-KMS with the configured key, only through S3 in its region."""
    key = settings.storage.kms_key_id
    if not key:
        return None  # none, SSE-S3, or the AWS-managed aws/s3 key: nothing to grant
    region = settings.storage.region
    statement: dict[str, Any] = {
        "Sid": "EncryptWithTheConfiguredKey",
        "Effect": "Allow",
        "Action": ["kms:Decrypt", "kms:GenerateDataKey"],
        "Resource": key,
        "Condition": {"StringEquals": {"kms:ViaService": f"s3.{region}.amazonaws.com"}},
    }
    if key.startswith("alias/"):
        statement["Resource"] = f"arn:{partition(region)}:kms:{region}:*:key/*"
        statement["Condition"]["ForAnyValue:StringEquals"] = {"kms:ResourceAliases": key}
    elif _KEY_ID.match(key):
        statement["Resource"] = f"arn:{partition(region)}:kms:{region}:*:key/{key}"
    return statement


def gateway_statements(settings: Settings) -> list[dict[str, Any]]:
    prefix = settings.storage.prefix
    listing: dict[str, Any] = {
        "Sid": "ListUnderPrefix",
        "Effect": "Allow",
        "Action": "s3:ListBucket",
        "Resource": bucket_arn(settings),
    }
    if prefix:
        listing["Condition"] = {"StringLike": {"s3:prefix": [f"{prefix}/*"]}}
    statements: list[dict[str, Any]] = [
        {
            "Sid": "ObjectsUnderPrefix",
            "Effect": "Allow",
            "Action": OBJECT_ACTIONS,
            "Resource": objects_arn(settings),
        },
        listing,
        {
            "Sid": "FindStaleMultipartUploads",
            "Effect": "Allow",
            "Action": "s3:ListBucketMultipartUploads",
            "Resource": bucket_arn(settings),
        },
    ]
    kms = _kms_statement(settings)
    if kms:
        statements.append(kms)
    queue = queue_arn(settings)
    if queue:
        statements.append(
            {
                "Sid": "SendUploadEvents",
                "Effect": "Allow",
                "Action": GATEWAY_SQS_ACTIONS,
                "Resource": queue,
            }
        )
    return statements


def notifier_statements(settings: Settings) -> list[dict[str, Any]]:
    queue = queue_arn(settings)
    if not queue:
        return []
    return [
        {
            "Sid": "ReceiveUploadEvents",
            "Effect": "Allow",
            "Action": NOTIFIER_SQS_ACTIONS,
            "Resource": queue,
        }
    ]


def identity_policy(settings: Settings, role: Role = "gateway") -> dict[str, Any]:
    """The IAM policy to attach to the role (or user) that runs `serve` or `notifier`."""
    statements = (
        gateway_statements(settings) if role == "gateway" else notifier_statements(settings)
    )
    return {"Version": VERSION, "Statement": statements}


def bucket_policy(settings: Settings) -> dict[str, Any]:
    """Recommended bucket policy: TLS only, and no upload under another encryption.

    `...IfExists`: UploadPart and CompleteMultipartUpload carry no encryption header
    (the upload took it at its start), so a plain StringNotEquals would refuse them;
    a request without the header gets the bucket's default encryption instead.
    """
    bucket, objects = bucket_arn(settings), f"{bucket_arn(settings)}/*"
    statements: list[dict[str, Any]] = [
        {
            "Sid": "DenyInsecureTransport",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:*",
            "Resource": [bucket, objects],
            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
        }
    ]
    sse = settings.storage.sse
    if sse:
        statements.append(
            {
                "Sid": "DenyOtherEncryption",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:PutObject",
                "Resource": objects_arn(settings),
                "Condition": {"StringNotEqualsIfExists": {"s3:x-amz-server-side-encryption": sse}},
            }
        )
    key = settings.storage.kms_key_id
    if key and key.startswith("arn:"):
        statements.append(
            {
                "Sid": "DenyOtherKmsKey",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:PutObject",
                "Resource": objects_arn(settings),
                "Condition": {
                    "StringNotEqualsIfExists": {
                        "s3:x-amz-server-side-encryption-aws-kms-key-id": key
                    }
                },
            }
        )
    return {"Version": VERSION, "Statement": statements}


def policy_notes(settings: Settings, role: Role, for_bucket: bool) -> list[str]:
    """What the JSON cannot say: the settings to pair it with, and its known limits."""
    bucket = settings.storage.bucket
    notes: list[str] = []
    if for_bucket:
        notes.append(
            "turn on Block Public Access: aws s3api put-public-access-block --bucket "
            f"{bucket} --public-access-block-configuration BlockPublicAcls=true,"
            "IgnorePublicAcls=true,BlockPublicPolicy=true,RestrictPublicBuckets=true"
        )
        if settings.storage.sse:
            notes.append(
                f"set the bucket's default encryption to {settings.storage.sse} too, for "
                "requests that carry no encryption header (aws s3api "
                "put-bucket-encryption)"
            )
        else:
            notes.append(
                "storage.sse is not set: S3 encrypts with SSE-S3 by default; set "
                "storage.sse to have this policy refuse any other encryption"
            )
        return notes
    if settings.events.queue_url is None:
        notes.append("events.queue_url is not set: no SQS permissions included")
    elif "*" in (queue_arn(settings) or ""):
        notes.append("the queue URL does not name its region or account: replace the '*'")
    if role == "gateway":
        notes.append(
            "s3:ListBucketMultipartUploads cannot be narrowed to the prefix (S3 has no "
            "s3:prefix key for it): it lists open uploads of the whole bucket, never data"
        )
        key = settings.storage.kms_key_id
        if key and not key.startswith("arn:") and not key.startswith("alias/"):
            notes.append("storage.kms_key_id is not an ARN: the account in the KMS ARN is '*'")
    notes.append(
        "if the queue is encrypted with a customer-managed KMS key, also allow "
        + ("kms:GenerateDataKey and kms:Decrypt" if role == "gateway" else "kms:Decrypt")
        + " on that key"
    )
    return notes
