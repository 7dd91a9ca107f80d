"""The GPU work pools' base job templates (deploy/) against Prefect's own rules and the workers'
own defaults (prefect-kubernetes, prefect-docker; no cluster or Docker engine here), and the GPU
deployments that run on them."""

import json

import pytest
import yaml
from prefect.server.schemas.actions import WorkPoolCreate
from prefect.utilities.templating import apply_values

from alignpipe.core.recipe import load_config
from alignpipe.flows.pipeline import pipeline

from conftest import ROOT

DEPLOY = ROOT / "deploy"
pytestmark = pytest.mark.fast

POOLS = {"alignpipe-gpu": "kubernetes", "alignpipe-gpu-docker": "docker"}


def _worker(kind: str):
    if kind == "kubernetes":
        from prefect_kubernetes.worker import KubernetesWorker, KubernetesWorkerJobConfiguration

        return KubernetesWorker, KubernetesWorkerJobConfiguration
    from prefect_docker.worker import DockerWorker, DockerWorkerJobConfiguration

    return DockerWorker, DockerWorkerJobConfiguration


def _template(kind: str) -> dict:
    return json.loads((DEPLOY / f"{kind}-gpu-pool.json").read_text())


@pytest.mark.parametrize("kind", sorted(set(POOLS.values())))
def test_template_is_a_valid_pool_that_keeps_the_workers_defaults(kind):
    worker, _ = _worker(kind)
    template, default = _template(kind), worker.get_default_base_job_template()
    # what the Prefect server checks on `prefect work-pool create`: every placeholder is declared
    WorkPoolCreate(name=f"alignpipe-gpu-{kind}", type=kind, base_job_template=template)
    assert set(template["job_configuration"]) == set(default["job_configuration"])
    assert set(default["variables"]["properties"]) <= set(template["variables"]["properties"])


def _rendered(kind: str, **values):
    """The job configuration a worker builds for a flow run: the variables' defaults and `values`
    filled into the template, then validated by the worker's own configuration class."""
    _, job_configuration = _worker(kind)
    template = _template(kind)
    defaults = {k: v["default"] for k, v in template["variables"]["properties"].items() if "default" in v}
    return job_configuration(**apply_values(template["job_configuration"], defaults | values))


def test_kubernetes_pods_get_gpus_the_shared_state_volume_and_the_gpu_nodes():
    job = _rendered("kubernetes", gpus=4)
    pod = job.job_manifest["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert container["image"] == "alignpipe:cuda" and container["workingDir"] == "/app"
    assert {"name": "state", "mountPath": "/state"} in container["volumeMounts"]
    claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert claims == ["alignpipe-state"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert job.env["ALIGNPIPE_HOME"] == "/state" and job.env["MLFLOW_TRACKING_URI"]


def test_docker_containers_get_every_gpu_and_the_state_volume():
    job = _rendered("docker")
    assert job.image == "alignpipe:cuda" and "alignpipe-state:/state" in job.volumes
    (request,) = job.container_create_kwargs["device_requests"]
    assert request["capabilities"] == [["gpu"]] and request["count"] == -1
    assert job.container_create_kwargs["working_dir"] == "/app" and job.env["ALIGNPIPE_HOME"] == "/state"


def test_gpu_deployments_run_the_pipeline_from_the_image_on_those_pools():
    spec = yaml.safe_load((DEPLOY / "prefect-gpu.yaml").read_text())
    assert spec["pull"] == [{"prefect.deployments.steps.set_working_directory": {"directory": "/app"}}]
    assert {d["work_pool"]["name"] for d in spec["deployments"]} == set(POOLS)
    for d in spec["deployments"]:
        assert d["entrypoint"] == "flows/pipeline.py:pipeline" and pipeline.name == "pipeline"
        assert set(d["parameters"]) <= set(pipeline.parameters.properties)
        load_config(ROOT / d["parameters"]["config"])
        kind = POOLS[d["work_pool"]["name"]]
        declared = _template(kind)["variables"]["properties"]
        assert set(d["work_pool"].get("job_variables", {})) <= set(declared)
