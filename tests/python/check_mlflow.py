#!/usr/bin/env python3
"""MLflow's own client reads what Kiln sent, for tests/tracking/mlflow_secure.rs.

    check_mlflow.py wait URI CA_FILE      until URI/health answers over TLS (180 s at most)
    check_mlflow.py runs URI EXPERIMENT   the experiment's runs as JSON, read with MlflowClient

`runs` authenticates and checks the server's certificate as any MLflow user does: with
MLFLOW_TRACKING_USERNAME/PASSWORD and MLFLOW_TRACKING_SERVER_CERT_PATH from the environment.
"""
import json
import ssl
import sys
import time
import urllib.request


def wait(uri, ca):
    context = ssl.create_default_context(cafile=ca)
    began = time.monotonic()
    while True:
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2, context=context)
            return
        except OSError as e:
            if time.monotonic() - began > 180:
                sys.exit(f"{uri}/health did not answer in 180 s: {e}")
            time.sleep(0.25)


def runs(uri, experiment):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    out = []
    for run in client.search_runs([exp.experiment_id]):
        metrics = {
            key: [[m.step, m.value] for m in client.get_metric_history(run.info.run_id, key)]
            for key in run.data.metrics
        }
        out.append({"name": run.info.run_name, "status": run.info.status,
                    "params": run.data.params, "metrics": metrics})
    print(json.dumps(out))


if __name__ == "__main__":
    {"wait": wait, "runs": runs}[sys.argv[1]](*sys.argv[2:])
