import json
import os
import struct

import pytest

from llmq import weightfiles
from llmq.errors import CorruptModelError, ModelNotFoundError


def _write_st(path, tensors, metadata=None):
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)
    return path


# -- safetensors ------------------------------------------------------------------------------------------
def test_safetensors_header_accepts_valid_and_rejects_broken(tmp_path):
    import torch

    f = _write_st(tmp_path / "model.safetensors", {"a": torch.ones(4, 4), "b": torch.zeros(3)})
    assert set(weightfiles.safetensors_header(f)) >= {"a", "b"}
    assert sorted(weightfiles.check_safetensors_folder(tmp_path)) == ["a", "b"]
    data = f.read_bytes()
    cases = {
        "empty": (b"", "0 bytes"),
        "truncated": (data[:-8], "truncated"),
        "garbage": (os.urandom(256), "header length|not JSON"),
        "not-json": (struct.pack("<Q", 4) + b"\xff\xfe{]" + b"0" * 16, "not JSON"),
    }
    for name, (content, msg) in cases.items():
        g = tmp_path / f"{name}.safetensors"
        g.write_bytes(content)
        with pytest.raises(CorruptModelError, match=msg):
            weightfiles.safetensors_header(g)


def test_shard_index_naming_a_missing_shard(tmp_path):
    import torch

    _write_st(tmp_path / "model-00001-of-00002.safetensors", {"a": torch.ones(2)})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(CorruptModelError, match="00002-of-00002"):
        weightfiles.check_safetensors_folder(tmp_path)


# -- missing weights --------------------------------------------------------------------------------------
def test_missing_weights_with_base_prefix():
    expected = ["bert.embeddings.w", "bert.layer.0.w", "cls.predictions.bias"]
    assert weightfiles.missing_weights(expected, ["embeddings.w", "layer.0.w"], "bert") == ["cls.predictions.bias"]
    assert weightfiles.missing_weights(["a", "b"], ["a", "b", "c"]) == []


def test_check_loading_info():
    weightfiles.check_loading_info({"missing_keys": [], "mismatched_keys": []}, "m")
    with pytest.raises(CorruptModelError, match="newly initialised cls.x"):
        weightfiles.check_loading_info({"missing_keys": ["cls.x"]}, "m")




def test_required_folder_without_safetensors_names_what_it_holds(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert weightfiles.check_safetensors_folder(tmp_path) == []  # not required: nothing to check
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ModelNotFoundError, match="pytorch_model.bin.*safetensors only") as e:
        weightfiles.check_safetensors_folder(tmp_path, required=True)
    assert "\n" not in str(e.value)


def test_tensors_and_shape_mismatches_from_headers(tmp_path):
    import torch

    _write_st(tmp_path / "model.safetensors", {"w": torch.ones(4, 2), "q": torch.zeros(4, 1, dtype=torch.uint8)})
    present = weightfiles.safetensors_tensors(tmp_path)
    assert present == {"w": ("F32", (4, 2)), "q": ("U8", (4, 1))}
    assert weightfiles.mismatched_shapes({"w": (4, 2), "q": (4, 2)}, present) == []  # packed ints: not compared
    assert weightfiles.mismatched_shapes({"w": (8, 2)}, present) == [("w", (8, 2), (4, 2))]
    assert weightfiles.mismatched_shapes({"model.w": (8, 2)}, present, "model") == [("model.w", (8, 2), (4, 2))]


def _tiny_gguf(path):
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_token_list([f"t{i}" for i in range(300)])  # an array of strings, as real vocabularies are
    w.add_tensor("a.weight", np.ones((64, 32), dtype=np.float32))
    w.add_tensor("b.weight", np.arange(1000, dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_file_complete_truncated_or_not_gguf(tmp_path):
    f = _tiny_gguf(tmp_path / "m.gguf")
    weightfiles.check_gguf_file(f)
    size = f.stat().st_size
    assert size - 32 < weightfiles._gguf_end(f) <= size  # the end of the data, less the writer's alignment padding
    data = f.read_bytes()
    for n, msg in ((len(data) - 40, "truncated"), (200, "truncated or damaged|truncated"), (10, "bytes")):
        g = tmp_path / f"cut{n}.gguf"
        g.write_bytes(data[:n])
        with pytest.raises(CorruptModelError, match=msg) as e:
            weightfiles.check_gguf_file(g)
        assert "not a valid GGUF file" in str(e.value) and "\n" not in str(e.value)
    (tmp_path / "x.gguf").write_bytes(os.urandom(4096))
    with pytest.raises(CorruptModelError, match="magic"):
        weightfiles.check_gguf_file(tmp_path / "x.gguf")


def test_the_demo_gguf_passes_and_ends_where_its_data_ends():
    from llmq.models import demo_gguf_path

    p = demo_gguf_path()
    weightfiles.check_gguf_file(p)
    assert weightfiles._gguf_end(p) == p.stat().st_size
