"""Export of all four graphs and ONNX Runtime vs PyTorch parity (test-size model)."""
import onnx
import onnxruntime as ort
import pytest
import torch

from proxyseg_model.build import build_test_tiny
from proxyseg_model.export import GRAPHS, check_parity, export_graphs, metadata, prepare_for_export
from proxyseg_model.lora import LoRALinear, add_lora


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = build_test_tiny()
    add_lora(model.sam, rank=2)
    for m in model.modules():
        if isinstance(m, LoRALinear):
            torch.nn.init.normal_(m.lora_b, std=0.05)
    model = prepare_for_export(model)
    out = tmp_path_factory.mktemp("bundle")
    sizes = export_graphs(model, out)
    return model, out, sizes


def test_four_graphs_with_metadata(exported):
    model, out, sizes = exported
    assert set(sizes) == set(GRAPHS)
    meta = metadata(model)
    for g in GRAPHS:
        proto = onnx.load(str(out / f"{g}.onnx"))
        onnx.checker.check_model(proto)
        assert {p.key: p.value for p in proto.metadata_props} == meta
        assert proto.opset_import[0].version == 17
        assert all(n.domain in ("", "ai.onnx") for n in proto.graph.node), "no custom ops"
    io = {g: ort.InferenceSession(str(out / f"{g}.onnx")) for g in GRAPHS}
    assert [i.name for i in io["image_encoder"].get_inputs()] == ["image"]
    assert [o.name for o in io["support_encoder"].get_outputs()] == ["support_keys", "support_values"]
    assert [i.name for i in io["prompt_generator"].get_inputs()] == ["image_embeddings", "support_keys", "support_values"]
    assert [o.name for o in io["mask_decoder"].get_outputs()] == ["mask_logits", "iou_scores"]


@pytest.mark.parametrize("n,k", [(2, 3), (1, 1), (4, 2)])
def test_ort_matches_torch(exported, n, k):
    model, out, _ = exported
    r = check_parity(model, out, n=n, k=k, seed=n * 10 + k)
    assert r["mask_logits"] <= 1e-3, r
    assert r["mask_agreement"] >= 0.999, r
    assert r["shapes"]["mask_logits"] == [k, 1, 16, 16]
    assert r["shapes"]["prompt_tokens"][0] == k
    assert r["shapes"]["support_values"][:2] == [n, k]


@pytest.fixture(scope="module")
def exported_detail(tmp_path_factory):
    """The same model with a detail branch whose gate is not zero (a trained one's is not)."""
    from proxyseg_model.detail import DetailBranch
    torch.manual_seed(1)
    model = build_test_tiny()
    model.detail = DetailBranch(token_dim=32)
    torch.nn.init.normal_(model.detail.gate.weight, std=0.5)
    model = prepare_for_export(model)
    out = tmp_path_factory.mktemp("bundle-detail")
    export_graphs(model, out)
    return model, out


def test_detail_branch_graph_takes_the_image_and_matches_torch(exported_detail):
    model, out = exported_detail
    dec = ort.InferenceSession(str(out / "mask_decoder.onnx"))
    assert [i.name for i in dec.get_inputs()] == ["image_embeddings", "prompt_tokens", "image"]
    from proxyseg_model.export import manifest
    assert manifest(model, {})["decoder_image"] is True
    for n, k in [(2, 3), (1, 1)]:
        r = check_parity(model, out, n=n, k=k, seed=n * 10 + k)
        assert r["mask_logits"] <= 1e-3, r
        assert r["mask_agreement"] >= 0.999, r
        assert r["shapes"]["mask_logits"] == [k, 1, 16, 16]


def test_detail_branch_adds_a_per_object_term_and_starts_at_zero():
    """A fresh branch (gate zero) leaves SAM's logits exactly as they were; a trained one
    changes them per object, and decoding without the image is refused."""
    from proxyseg_model.detail import DetailBranch
    torch.manual_seed(2)
    model = build_test_tiny().eval()
    emb, tokens = torch.randn(1, 32, 4, 4), torch.randn(2, model.ppg_cfg.token_grid ** 2, 32)
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        plain, _ = model.decode(emb, tokens)
        model.detail = DetailBranch(token_dim=32).eval()
        fresh, _ = model.decode(emb, tokens, image)
        assert torch.equal(plain, fresh)
        torch.nn.init.normal_(model.detail.gate.weight, std=0.5)
        trained, _ = model.decode(emb, tokens, image)
        delta = (trained - plain).abs().flatten(1).amax(1)
        assert (delta > 1e-3).all(), delta
        assert not torch.allclose(trained[0] - plain[0], trained[1] - plain[1]), "one term per object"
    with pytest.raises(ValueError, match="needs the image"):
        model.decode(emb, tokens)
