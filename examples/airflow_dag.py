"""An Airflow DAG that runs a dicomflow pipeline spec every night.

Airflow is not a dependency of dicomflow: copy this file into your Airflow
``dags/`` folder on a machine where ``dicomflow`` is installed. The task calls
the CLI, so exit codes carry the outcome: 0 all good, 3 more inputs failed than
the spec's ``limits.max_error_rate`` allows, 2 a configuration error, 1 a crash.
Reruns are safe: the lake's ledger skips what earlier runs committed, and a
killed run resumes where it stopped.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow import DAG  # type: ignore[import-not-found]
from airflow.operators.bash import BashOperator  # type: ignore[import-not-found]

SPEC = "/etc/dicomflow/nightly_index.yaml"

with DAG(
    dag_id="dicomflow_nightly_index",
    start_date=datetime(2026, 1, 1),
    schedule="0 2 * * *",  # 02:00 every night
    catchup=False,
    max_active_runs=1,  # one writer per lake at a time
    default_args={"retries": 2, "retry_delay": timedelta(minutes=10)},
) as dag:
    BashOperator(
        task_id="run_spec",
        bash_command=f"dicomflow --log-json run {SPEC} --no-progress",
        env={"DASK_SCHEDULER_ADDRESS": "{{ var.value.get('dask_scheduler', '') }}"},
        append_env=True,
    )
