"""PEFT <-> artifact conversion, checked against PEFT itself on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from spul.cli import main as spul_main
from spul.models import load_base_model
from spul.prompts_store import (
    PromptStore,
    load_artifact,
    model_fingerprint,
    position_ids_from_mask,
    prepend_prompt,
)
from spul.trainer.peft_interop import PeftInteropError, export_peft, import_peft, read_peft_prompt

peft = pytest.importorskip("peft")

STEPS = 6
QUERY = "### question : where was alba born ? ### answer :"


def fresh_model(model_dir: Path) -> torch.nn.Module:
    """A private copy: PEFT wraps the model it is given, so never hand it the shared fixture."""
    return AutoModelForCausalLM.from_pretrained(model_dir).eval()


def query_ids(model_dir: Path) -> torch.Tensor:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = [tokenizer.bos_token_id] + tokenizer(QUERY, add_special_tokens=False)["input_ids"]
    return torch.tensor([ids])  # (1, T)


def manual_greedy(model: torch.nn.Module, prompt: torch.Tensor, ids: torch.Tensor, steps: int) -> list[int]:
    """Greedy decoding with our own prepend, recomputing the whole sequence each step (no cache)."""
    embed = model.get_input_embeddings()
    tokens = ids
    with torch.no_grad():
        for _ in range(steps):
            embeds, mask, _ = prepend_prompt(prompt, embed(tokens), torch.ones_like(tokens))  # (1, P+T, H)
            logits = model(
                inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids_from_mask(mask)
            ).logits
            tokens = torch.cat([tokens, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return tokens[0, ids.shape[1] :].tolist()


def peft_greedy(peft_model, ids: torch.Tensor, steps: int) -> list[int]:
    """PEFT's own greedy generation. use_cache=False: with peft 0.21.2 + transformers 5.24 the cached
    decode steps of a prompt-learning model get positions that ignore the P virtual tokens, so after a
    few tokens they disagree with PEFT's own forward (and with transformers' generate from
    inputs_embeds); the uncached path agrees with both."""
    with torch.no_grad():
        out = peft_model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=steps, min_new_tokens=steps,
            do_sample=False, use_cache=False,
        )  # fmt: skip
    return out[0, ids.shape[1] :].tolist()


def peft_ptuning_model(model_dir: Path, *, encoder: str = "MLP", seed: int = 1):
    config = peft.PromptEncoderConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=5,
        encoder_hidden_size=16,
        encoder_reparameterization_type=encoder,
    )
    peft_model = peft.get_peft_model(fresh_model(model_dir), config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # a freshly initialised encoder is too tame to prove anything
        for param in peft_model.prompt_encoder.parameters():
            param.copy_(torch.randn(param.shape, generator=generator))
    return peft_model


@pytest.fixture(scope="module")
def base(tiny_model_dir):
    return load_base_model(tiny_model_dir, device="cpu")


@pytest.fixture(scope="module")
def ptuning_dir(tiny_model_dir, tmp_path_factory):
    """A P-tuning checkpoint saved by PEFT, plus PEFT's own prompt and greedy tokens for it."""
    peft_model = peft_ptuning_model(tiny_model_dir)
    out = tmp_path_factory.mktemp("ptuning")
    peft_model.save_pretrained(out)
    with torch.no_grad():
        prompt = peft_model.get_prompt(batch_size=1)[0]  # (P, H)
    return out, prompt, peft_greedy(peft_model, query_ids(tiny_model_dir), STEPS)


def test_import_ptuning_matches_peft_prompt_and_generations(ptuning_dir, base, tiny_model_dir, tmp_path):
    directory, peft_prompt, peft_tokens = ptuning_dir
    sha = import_peft(directory, base=base, out=tmp_path / "a.safetensors", profile="ptuned")
    artifact = load_artifact(
        tmp_path / "a.safetensors", expected_fingerprint=model_fingerprint(base.model, base.tokenizer)
    )
    assert artifact.sha256 == sha
    assert artifact.meta.profile == "ptuned" and artifact.meta.training_config["source"] == "peft"
    torch.testing.assert_close(artifact.embeddings, peft_prompt, rtol=0, atol=1e-6)
    ours = manual_greedy(fresh_model(tiny_model_dir), artifact.embeddings, query_ids(tiny_model_dir), STEPS)
    assert ours == peft_tokens
    # the prompt must matter, or the comparison above proves nothing
    plain = manual_greedy(
        fresh_model(tiny_model_dir), torch.zeros(0, base.hidden_size), query_ids(tiny_model_dir), STEPS
    )
    assert plain != ours


@pytest.mark.parametrize("encoder", ["MLP", "LSTM"])
def test_import_rebuilds_encoder_from_its_weights(encoder, tiny_model_dir, tmp_path):
    """A checkpoint that holds the encoder (not PEFT's saved table) is run once through it."""
    peft_model = peft_ptuning_model(tiny_model_dir, encoder=encoder, seed=2)
    peft_model.save_pretrained(tmp_path)  # config; the weights are replaced below
    weights = {
        f"prompt_encoder.{k}": v.contiguous() for k, v in peft_model.prompt_encoder.state_dict().items()
    }
    save_file(weights, tmp_path / "adapter_model.safetensors")
    _, table, _ = read_peft_prompt(tmp_path)
    with torch.no_grad():
        expected = peft_model.get_prompt(batch_size=1)[0]  # (P, H)
    torch.testing.assert_close(table, expected, rtol=0, atol=1e-5)


def test_spul_encoder_is_a_rename_free_copy_of_peft_ptuning(tiny_model_dir):
    """The encoder SPUL trains has PEFT's names: its state dict loads into PEFT as is, and back."""
    from spul.trainer.spul import PromptEncoder

    peft_model = peft_ptuning_model(tiny_model_dir, seed=4)  # 5 virtual tokens, encoder_hidden_size 16
    peft_encoder = peft_model.prompt_encoder["default"]
    ours = PromptEncoder(5, peft_model.config.hidden_size, 16)
    with torch.no_grad():
        for param in ours.parameters():
            param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(param.numel())))
    peft_encoder.load_state_dict(ours.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(peft_model.get_prompt(batch_size=1)[0], ours(), rtol=0, atol=1e-6)
    again = PromptEncoder(5, peft_model.config.hidden_size, 16)
    again.load_state_dict(peft_encoder.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(again(), ours())


def test_import_prompt_tuning(tiny_model_dir, base, tmp_path):
    config = peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)
    peft_model = peft.get_peft_model(fresh_model(tiny_model_dir), config).eval()
    peft_model.save_pretrained(tmp_path / "pt")
    import_peft(tmp_path / "pt", base=base, out=tmp_path / "a.safetensors", profile="pt")
    artifact = load_artifact(tmp_path / "a.safetensors")
    expected = peft_model.prompt_encoder["default"].embedding.weight.detach()  # (P, H)
    assert torch.equal(artifact.embeddings, expected)
    ids = query_ids(tiny_model_dir)
    assert manual_greedy(fresh_model(tiny_model_dir), artifact.embeddings, ids, STEPS) == peft_greedy(
        peft_model, ids, STEPS
    )


def test_export_loads_in_peft_with_identical_greedy_outputs(tiny_model_dir, base, tmp_path):
    prompt = torch.randn(4, base.hidden_size, generator=torch.Generator().manual_seed(3)) * 2  # (P, H)
    fingerprint = model_fingerprint(base.model, base.tokenizer)
    path = tmp_path / "a.safetensors"
    from spul.prompts_store import save_artifact

    save_artifact(path, prompt, profile="exp", base_model=str(tiny_model_dir), base_fingerprint=fingerprint)
    out = export_peft(path, base=base, out_dir=tmp_path / "peft")
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    peft_model = peft.PeftModel.from_pretrained(fresh_model(tiny_model_dir), out).eval()
    assert isinstance(peft_model.peft_config["default"], peft.PromptTuningConfig)
    with torch.no_grad():
        assert torch.equal(peft_model.get_prompt(batch_size=1)[0], prompt)
    ids = query_ids(tiny_model_dir)
    assert peft_greedy(peft_model, ids, STEPS) == manual_greedy(
        fresh_model(tiny_model_dir), prompt, ids, STEPS
    )
    # and back again: the round trip is lossless
    import_peft(out, base=base, out=tmp_path / "back.safetensors", profile="exp")
    assert torch.equal(load_artifact(tmp_path / "back.safetensors").embeddings, prompt)


def test_export_refuses_artifact_of_another_model(tiny_model_dir, base, tmp_path):
    path = tmp_path / "a.safetensors"
    from spul.prompts_store import save_artifact

    save_artifact(
        path, torch.zeros(2, base.hidden_size), profile="x", base_model="other", base_fingerprint="sha256:0"
    )
    with pytest.raises(ValueError, match="retrain it for this model"):
        export_peft(path, base=base, out_dir=tmp_path / "peft")


def test_refuses_pickle_checkpoint(tmp_path, ptuning_dir):
    directory, _, _ = ptuning_dir
    (tmp_path / "adapter_config.json").write_bytes((directory / "adapter_config.json").read_bytes())
    (tmp_path / "adapter_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(PeftInteropError, match="pickle"):
        read_peft_prompt(tmp_path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"peft_type": "LORA"}, "PROMPT_TUNING"),
        ({"token_dim": 48}, "shape"),
        ({"num_virtual_tokens": 7}, "shape"),
        ({"task_type": "SEQ_2_SEQ_LM", "num_transformer_submodules": 2}, "decoder-only"),
        ({"encoder_reparameterization_type": "GRU"}, "MLP"),
    ],
)
def test_refuses_inconsistent_config(change, message, tmp_path, ptuning_dir):
    directory, _, _ = ptuning_dir
    config = json.loads((directory / "adapter_config.json").read_text()) | change
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    (tmp_path / "adapter_model.safetensors").write_bytes(
        (directory / "adapter_model.safetensors").read_bytes()
    )
    with pytest.raises(PeftInteropError, match=message):
        read_peft_prompt(tmp_path)


def test_import_refuses_wrong_hidden_size(tmp_path, base):
    config = {"peft_type": "PROMPT_TUNING", "task_type": "CAUSAL_LM", "num_virtual_tokens": 2, "token_dim": 8}
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    save_file({"prompt_embeddings": torch.zeros(2, 8)}, tmp_path / "adapter_model.safetensors")
    with pytest.raises(PeftInteropError, match="token_dim 8 != hidden size 32"):
        import_peft(tmp_path, base=base, out=tmp_path / "a.safetensors", profile="x")


def test_cli_import_into_store_then_export(ptuning_dir, tiny_model_dir, tmp_path, capsys):
    directory, peft_prompt, _ = ptuning_dir
    art, store = tmp_path / "a.safetensors", tmp_path / "store"
    argv = ["import-peft", str(directory), "--base", str(tiny_model_dir), "--out", str(art)]
    assert spul_main([*argv, "--store", str(store), "--profile", "imported"]) == 0
    _, stored = PromptStore(store).get("imported")
    torch.testing.assert_close(stored.embeddings, peft_prompt, rtol=0, atol=1e-6)
    assert (
        spul_main(["export-peft", str(art), "--base", str(tiny_model_dir), "--out", str(tmp_path / "p")]) == 0
    )
    assert (tmp_path / "p" / "adapter_model.safetensors").is_file()
    assert spul_main([*argv[:2], "--base", str(tiny_model_dir), "--out", str(art), "--profile", "../x"]) == 2
    assert "invalid profile id" in capsys.readouterr().err
