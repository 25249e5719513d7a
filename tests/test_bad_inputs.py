"""Bad inputs end with exit code 2 and ONE line ``fedtext: error: ...`` naming the culprit.

Each case goes through the real entry point (``simulations.cli.main``) in-process.
All of them fail during validation, before any Flower process, model or network.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from common.processes import free_port
from simulations.cli import main
from tests.model_families import make_family_model

GOOD_ROWS = "text,label\na warm and funny film,fresh\ndull and far too long,rotten\nmoving,fresh\n"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from deploy.certs import make_certificates

    root = tmp_path_factory.mktemp("bad-inputs")
    make_certificates(root / "certs", ["localhost"], clients=1)
    make_certificates(root / "other", ["localhost"], clients=1)  # another federation's identities
    partial = root / "partial-certs"
    partial.mkdir()
    for name in ("ca.crt", "server.pem"):
        (partial / name).write_bytes((root / "certs" / name).read_bytes())
    nokeys = root / "no-keys"
    nokeys.mkdir()
    (nokeys / "client-1.id.pub").write_text("ab" * 32 + "\n")  # identity keys are not auth keys
    badkeys = root / "bad-keys"
    badkeys.mkdir()
    (badkeys / "client-1.pub").write_text("not a key\n")
    out = {
        "root": root,
        "certs": root / "certs",
        "partial": partial,
        "nokeys": nokeys,
        "badkeys": badkeys,
        "good": root / "good.csv",
        "empty": root / "empty.csv",
        "nocol": root / "nocol.csv",
        "badlabel": root / "badlabel.csv",
        "latin1": root / "latin1.csv",
        "txt": root / "data.txt",
        "onerow": root / "onerow.csv",
        "nolabel": root / "nolabel.csv",
        "runcfg": root / "run.toml",
        "tinybert": make_family_model("bert", root / "tinybert"),
        "badvalue": root / "bad_value.toml",
        "nottoml": root / "not_toml.toml",
        "badhex": root / "identities-bad.json",
    }
    out["badhex"].write_text('{"1": "zz"}\n')
    out["good"].write_text(GOOD_ROWS)
    out["empty"].write_bytes(b"")
    out["nocol"].write_text("review,label\nnice,fresh\nbad,rotten\n")
    out["badlabel"].write_text("text,label\nnice,fresh\nmeh,so-so\n")
    out["latin1"].write_bytes("text,label\ncaf\u00e9 cr\u00e8me,fresh\nbad,rotten\n".encode("latin-1"))
    out["txt"].write_text(GOOD_ROWS)
    out["onerow"].write_text("text,label\nonly one,fresh\n")
    out["nolabel"].write_text("text,label\nnice,fresh\nno label here,\n")
    out["runcfg"].write_text('rounds = 2\nlearning-rate = 0.1\n')
    out["badvalue"].write_text('rounds = 2\nlr-schedule = "sideways"\n')
    out["nottoml"].write_text('rounds = = 2\n')
    return out


def client(f: dict[str, Path], *extra: str, data: str = "good", server: str = "localhost:9091") -> list[str]:
    args = ["client", "--server", server, "--data", str(f[data]) if data in f else data,
            "--ca", str(f["certs"] / "ca.crt"), "--key", str(f["certs"] / "clients" / "client-1.key"),
            "--home", str(f["root"] / "home")]
    return args + list(extra)


def server(f: dict[str, Path], *extra: str) -> list[str]:
    return ["server", "--certs", str(f["certs"]), "--authorized-keys", str(f["certs"] / "clients"),
            "--host", "127.0.0.1", "--port", str(free_port()), "--out", str(f["root"] / "run"), *extra]


def insecure_server(f: dict[str, Path], *extra: str) -> list[str]:
    return ["server", "--insecure", "--host", "127.0.0.1", "--port", str(free_port()),
            "--out", str(f["root"] / "run"), *extra]


def _id_key(f: dict[str, Path]) -> Path:
    return f["certs"] / "clients" / "client-1.id.key"


def _trusted(f: dict[str, Path]) -> Path:
    return f["certs"] / "clients" / "identities.json"


# (id, argv builder, substrings the one error line must contain)
CASES = [
    # --- a client's data file -----------------------------------------------------------
    ("data-missing", lambda f: client(f, data=str(f["root"] / "nope.csv")), ["nope.csv", "not found"]),
    ("data-empty", lambda f: client(f, data="empty"), ["empty.csv", "empty file"]),
    ("data-no-text-column", lambda f: client(f, data="nocol"), ["nocol.csv", "no column 'text'"]),
    ("data-label-not-in-labels", lambda f: client(f, "--labels", "fresh,rotten", data="badlabel"),
     ["badlabel.csv", "row 2", "label 'so-so'"]),
    ("data-latin1", lambda f: client(f, data="latin1"), ["latin1.csv", "not UTF-8"]),
    ("data-wrong-extension", lambda f: client(f, data="txt"), ["data.txt", "unknown format"]),
    ("data-one-row", lambda f: client(f, data="onerow"), ["onerow.csv", "1 row(s)"]),
    ("data-missing-label", lambda f: client(f, data="nolabel"), ["nolabel.csv", "row 2", "missing label"]),
    ("data-wrong-text-column-flag", lambda f: client(f, "--text-column", "body"), ["good.csv", "'body'"]),
    # --- client flags -------------------------------------------------------------------
    ("server-without-port", lambda f: client(f, server="localhost"), ["--server", "HOST:PORT"]),
    ("server-bad-port", lambda f: client(f, server="localhost:99999"), ["--server", "1-65535"]),
    ("server-with-scheme", lambda f: client(f, server="https://localhost:9091"), ["--server", "scheme"]),
    ("labels-single", lambda f: client(f, "--labels", "fresh"), ["--labels"]),
    ("client-port-out-of-range", lambda f: client(f, "--port", "70000"), ["--port", "70000"]),
    ("client-negative-join-timeout", lambda f: client(f, "--join-timeout", "-1"), ["--join-timeout", "-1"]),
    ("client-zero-server-timeout", lambda f: client(f, "--server-timeout", "0"), ["--server-timeout", "0"]),
    ("client-negative-threads", lambda f: client(f, "--threads", "-2"), ["--threads", "-2"]),
    ("client-heartbeat-below-flowers-range", lambda f: client(f, "--heartbeat", "5"), ["--heartbeat", "10", "5"]),
    ("client-missing-ca-file", lambda f: client(f, "--ca", str(f["root"] / "none.crt")), ["--ca", "none.crt"]),
    ("client-ca-not-pem", lambda f: client(f, "--ca", str(f["good"])), ["--ca", "good.csv"]),
    ("client-key-not-openssh", lambda f: client(f, "--key", str(f["certs"] / "server.key")),
     ["--key", "server.key", "OpenSSH"]),
    ("client-key-missing", lambda f: client(f, "--key", str(f["root"] / "gone.key")), ["--key", "gone.key"]),
    ("client-insecure-with-ca", lambda f: client(f, "--insecure"), ["--insecure", "--ca"]),
    # --- client: secure-aggregation identity ----------------------------------------------
    ("identity-without-trusted", lambda f: client(f, "--identity", str(_id_key(f))),
     ["--identity and --trusted-identities"]),
    ("identity-not-pem", lambda f: client(f, "--identity", str(f["good"]), "--trusted-identities", str(_trusted(f))),
     ["--identity", "good.csv", "PEM"]),
    ("identity-is-the-auth-key", lambda f: client(f, "--identity", str(f["certs"] / "clients" / "client-1.key"),
                                                  "--trusted-identities", str(_trusted(f))),
     ["--identity", "client-1.key"]),
    ("trusted-not-json", lambda f: client(f, "--identity", str(_id_key(f)), "--trusted-identities", str(f["good"])),
     ["--trusted-identities", "good.csv", "not JSON"]),
    ("trusted-bad-hex", lambda f: client(f, "--identity", str(_id_key(f)), "--trusted-identities", str(f["badhex"])),
     ["--trusted-identities", "entry '1'", "64 hex"]),
    ("identity-of-another-federation", lambda f: client(
        f, "--identity", str(f["root"] / "other" / "clients" / "client-1.id.key"),
        "--trusted-identities", str(_trusted(f))), ["--identity", "not in --trusted-identities"]),
    ("client-no-ca-no-insecure", lambda f: ["client", "--server", "h:1", "--data", str(f["good"])],
     ["--ca", "required"]),
    # --- server: certificates and keys --------------------------------------------------
    ("server-no-certs", lambda f: ["server", "--port", str(free_port()), "--host", "127.0.0.1"],
     ["--certs", "required"]),
    ("server-certs-lack-key", lambda f: server(f, "--certs", str(f["partial"])), ["--certs", "server.key"]),
    ("server-certs-not-a-folder", lambda f: server(f, "--certs", str(f["good"])), ["--certs", "good.csv"]),
    ("server-no-pub-keys", lambda f: server(f, "--authorized-keys", str(f["nokeys"])),
     ["--authorized-keys", "no-keys"]),
    ("server-garbage-pub-key", lambda f: server(f, "--authorized-keys", str(f["badkeys"])),
     ["--authorized-keys", "client-1.pub"]),
    ("server-insecure-with-certs", lambda f: server(f, "--insecure"), ["--insecure", "--certs"]),
    ("server-port-out-of-range", lambda f: server(f, "--port", "70000"), ["--port", "70000"]),
    # --- server: config keys and data ---------------------------------------------------
    ("rounds-zero", lambda f: server(f, "--rounds", "0"), ["rounds", ">= 1"]),
    ("lr-negative", lambda f: server(f, "--lr", "-1"), ["'lr'", "-1"]),
    ("freeze-bottom-x", lambda f: server(f, "--freeze", "bottom:x"), ["freeze", "bottom:x"]),
    ("strategy-unknown", lambda f: server(f, "--strategy", "nope"), ["strategy", "nope"]),
    ("min-clients-zero", lambda f: server(f, "--min-clients", "0"), ["min-clients"]),
    ("run-config-unknown-key", lambda f: server(f, "--run-config", str(f["runcfg"])),
     ["run.toml", "unknown config key 'learning-rate'"]),
    ("run-config-missing", lambda f: server(f, "--run-config", str(f["root"] / "absent.toml")),
     ["--config", "absent.toml"]),
    ("config-missing", lambda f: ["simulate", "--config", str(f["root"] / "absent.toml")],
     ["--config", "absent.toml", "cannot read"]),
    ("config-unknown-key", lambda f: ["centralized", "--config", str(f["runcfg"])],
     ["run.toml", "unknown config key 'learning-rate'"]),
    ("config-bad-value", lambda f: ["simulate", "--config", str(f["badvalue"])],
     ["bad_value.toml", "lr-schedule", "sideways"]),
    ("config-not-toml", lambda f: ["simulate", "--config", str(f["nottoml"])],
     ["not_toml.toml", "not TOML"]),
    ("server-test-data-missing", lambda f: insecure_server(f, "--test-data", str(f["root"] / "test.csv")),
     ["test.csv", "not found"]),
    # --- simulate -------------------------------------------------------------------------
    ("partition-dirichlet-negative", lambda f: ["simulate", "--partition", "dirichlet:-1"],
     ["partition", "dirichlet:-1"]),
    ("clients-zero", lambda f: ["simulate", "--clients", "0"], ["clients", "0"]),
    ("ray-address-malformed", lambda f: ["simulate", "--ray-address", "nohost"], ["--ray-address", "HOST:PORT"]),
    ("ray-address-unreachable", lambda f: ["simulate", "--ray-address", "127.0.0.1:9"],
     ["--ray-address 127.0.0.1:9", "no Ray head answers"]),
    ("fraction-train-samples-too-few", lambda f: ["simulate", "--clients", "20", "--fraction-train", "0.1"],
     ["fraction-train", "samples 2 a round", "at least 3", ">= 0.15"]),
    ("freeze-beyond-the-models-blocks",
     lambda f: ["simulate", "--model", str(f["tinybert"]), "--freeze", "bottom:5", "--max-examples", "40"],
     ["freeze", "bottom:5", "2 layers"]),
    ("model-folder-without-a-model", lambda f: ["simulate", "--model", str(f["nokeys"]),
                                                "--max-examples", "40"], ["model", "no-keys"]),
    ("secagg-two-clients", lambda f: ["simulate", "--clients", "2"], ["clients", "at least 3", "--no-secagg"]),
    ("secagg-zero-clip", lambda f: ["simulate", "--secagg-clip", "0"], ["secagg-clip"]),
    ("secagg-overflow-bits", lambda f: ["simulate", "--secagg-bits", "31"], ["secagg-bits", "overflow"]),
    # --- using a saved model --------------------------------------------------------------
    ("evaluate-model-not-a-folder", lambda f: ["evaluate", "--model", str(f["root"] / "nomodel"),
                                               "--data", str(f["good"])], ["--model", "nomodel"]),
    ("evaluate-model-without-config", lambda f: ["evaluate", "--model", str(f["root"]), "--data", str(f["good"])],
     ["--model", "config.json"]),
    ("serve-model-missing", lambda f: ["serve", "--model", str(f["root"] / "absent")], ["--model", "absent"]),
    ("serve-port-out-of-range", lambda f: ["serve", "--model", str(f["root"]), "--port", "70000"],
     ["--port", "70000"]),
    ("serve-queue-zero", lambda f: ["serve", "--model", str(f["root"]), "--max-queue", "0"], ["--max-queue"]),
    ("export-quantize-unknown", lambda f: ["export", "--model", str(f["tinybert"]), "--out", str(f["root"] / "x"),
                                           "--quantize", "int4"], ["--quantize", "int4"]),
    ("export-model-without-config", lambda f: ["export", "--model", str(f["root"]), "--out", str(f["root"] / "x")],
     ["--model", "config.json"]),
    ("predict-nothing-to-classify", lambda f: ["predict", "--model", str(f["root"])], ["TEXT", "--file"]),
]


def test_table_is_large_enough() -> None:
    assert len(CASES) >= 20 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize(("build", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2(files: dict[str, Path], capsys: pytest.CaptureFixture[str],
                                      build, expected: list[str]) -> None:  # noqa: ANN001
    code = main(build(files))
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(err) == 1, err
    assert err[0].startswith("fedtext: error: "), err
    for part in expected:
        assert part in err[0], (part, err[0])
