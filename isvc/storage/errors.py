"""Storage failures a user can meet, each with the offending value and a way out.

    StorageError (IsvcError)
      + InvalidUri           the storageUri cannot be parsed (400)
        - UnsupportedScheme  a scheme isvc does not fetch (400)
      + StorageNotFound      bucket, key, claim, repo or URL does not exist (404)
      + StorageAuthError     credentials missing, wrong or not allowed (403)
      + StorageUnavailable   endpoint unreachable, stalled or failing after retries (503)
      + ArchiveError         a downloaded archive cannot be unpacked (422)
        - UnsafeArchive      a member would land outside the destination
      + ModelFolderError     the fetched folder is not a servable model (422)
        - ModelDirNotFound, MissingConfig, UnreadableFiles, MissingWeights, MissingTokenizer

Every error carries ``hint``: what to do about it. ``message`` is the problem alone (what an
HTTP body or a caller that prints the hint itself shows); ``str(error)`` is the message and
the hint together, so a CLI can print it as is. Nothing else may join them, or the hint is
printed twice.
"""

from __future__ import annotations

from isvc.errors import IsvcError


class StorageError(IsvcError):
    code = "storage_error"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.problem = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


class InvalidUri(StorageError):
    http_status = 400
    code = "invalid_storage_uri"


class UnsupportedScheme(InvalidUri):
    code = "unsupported_storage_scheme"


class StorageNotFound(StorageError):
    http_status = 404
    code = "storage_not_found"


class StorageAuthError(StorageError):
    http_status = 403
    code = "storage_auth_error"


class StorageUnavailable(StorageError):
    http_status = 503
    code = "storage_unavailable"


class ArchiveError(StorageError):
    http_status = 422
    code = "bad_archive"


class UnsafeArchive(ArchiveError):
    code = "unsafe_archive"


class ModelFolderError(StorageError):
    http_status = 422
    code = "invalid_model_folder"


class ModelDirNotFound(ModelFolderError):
    code = "model_dir_not_found"


class MissingConfig(ModelFolderError):
    code = "missing_config"


class UnreadableFiles(ModelFolderError):
    code = "unreadable_files"


class MissingWeights(ModelFolderError):
    code = "missing_weights"


class MissingTokenizer(ModelFolderError):
    code = "missing_tokenizer"
