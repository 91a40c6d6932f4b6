from llmq.errors import LlmqError, ModelNotFoundError
from llmq.hub import hub_error


def test_network_errors_read_and_write():
    e = ConnectionError("Failed to establish a new connection")
    r = hub_error(e, "x/y")
    assert isinstance(r, ModelNotFoundError) and r.args[0].startswith("Cannot reach the Hugging Face Hub for 'x/y'")
    w = hub_error(e, "me/z", writing="uploading")
    assert isinstance(w, LlmqError) and "Lost the connection" in str(w) and "me/z" in str(w)


def test_token_is_scrubbed_and_cause_chain_is_read():
    from huggingface_hub.errors import OfflineModeIsEnabled

    w = hub_error(RuntimeError("server said hf_SECRET is bad"), "me/z", writing="creating the repo", token="hf_SECRET")
    assert "hf_SECRET" not in str(w) and "***" in str(w) and "creating the repo" in str(w)
    try:
        try:
            raise OfflineModeIsEnabled("offline")
        except OfflineModeIsEnabled as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert "Cannot reach" in str(hub_error(outer, "x/y"))
        assert "HF_HUB_OFFLINE is set" in str(hub_error(outer, "me/z", writing="uploading"))
