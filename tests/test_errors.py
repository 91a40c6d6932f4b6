import errno

import pytest

from llmq.errors import LlmqError, ResourceError, UnknownNameError, note_path, resource_error


@pytest.mark.parametrize("code, words", [
    (errno.ENOSPC, "No space left"), (errno.EDQUOT, "quota"), (errno.EROFS, "Read-only file system"),
    (errno.ENAMETOOLONG, "too long"), (errno.EACCES, "ermission denied"), (errno.EPERM, "not permitted"),
])
def test_each_resource_errno_becomes_one_line_naming_the_path_and_the_fix(code, words):
    err = resource_error(OSError(code, "x", "/data/out/model.safetensors"))
    assert isinstance(err, ResourceError) and isinstance(err, LlmqError) and err.errno == code
    text = str(err)
    assert words in text and "/data/out/model.safetensors" in text and ";" in text and "\n" not in text


def test_other_errors_are_not_translated():
    assert resource_error(OSError(errno.ENOENT, "gone", "/x")) is None  # a bug or a race: keep the traceback
    assert resource_error(ValueError("bad")) is None
    assert resource_error(UnknownNameError("scheme", "x", ["y"])) is None


def test_wrapped_and_rust_errors_are_found_and_the_output_is_named():
    """A library wraps the OSError (or prints Rust's io::Error); ``write`` names no file, so the
    output the atomic writer was filling is named instead."""
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("saving failed") from inner
    except RuntimeError as e:
        note_path(e, "/data/out")
        assert "No space left on the device: /data/out;" in str(resource_error(e))
    rust = Exception('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space" })')
    assert "No space left" in str(resource_error(rust, "/data/o"))
    e = OSError(errno.EROFS, "ro")
    note_path(e, "/inner")
    note_path(e, "/outer")  # the innermost writer named it first
    assert "/inner" in str(resource_error(e))
    assert "/probe" in str(resource_error(e, "/probe"))  # an explicit path wins
