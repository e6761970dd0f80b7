"""The official `openai` client against `kubetune api --backend local`: jobs run by `kubetune run` with a tiny model.

One server per module; the whole flow in one test (upload, create, events while
running, checkpoints, pause and resume, cancel of a second job, pagination,
succeeded with fine_tuned_model), the error cases in another.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import openai
import pytest
from openai_helpers import wait_for

pytestmark = pytest.mark.timeout(400)


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key="unused-locally", max_retries=0)


def _messages(client: openai.OpenAI, job_id: str) -> list[str]:
    return [e.message for e in client.fine_tuning.jobs.list_events(job_id, limit=100)]  # every page, newest first


@pytest.mark.slow
def test_whole_flow_with_pause_resume_and_a_cancelled_second_job(local_api, tiny_files):
    client = _client(local_api)
    with open(tiny_files / "train.jsonl", "rb") as f:
        train = client.files.create(file=f, purpose="fine-tune")
    with open(tiny_files / "eval.jsonl", "rb") as f:
        val = client.files.create(file=("eval.jsonl", f.read()), purpose="fine-tune")
    assert train.status == "processed" and train.filename == "train.jsonl" and train.bytes == (tiny_files / "train.jsonl").stat().st_size
    assert client.files.retrieve(train.id).id == train.id
    assert {train.id, val.id} <= {f.id for f in client.files.list(purpose="fine-tune")}

    # 96 rows, batch 1, 2 epochs: 192 steps, a checkpoint every 4. (With batch 4, 48 steps took ~2 s on a quiet
    # machine, so the pause below could land after the last step and the job simply finished.)
    job = client.fine_tuning.jobs.create(model="tiny", training_file=train.id, validation_file=val.id, suffix="demo",
                                         hyperparameters={"n_epochs": 2, "batch_size": 1, "learning_rate_multiplier": 25},
                                         metadata={"team": "nlp"})
    assert job.status == "queued" and job.model == "tiny" and job.hyperparameters.n_epochs == 2 and job.metadata == {"team": "nlp"}
    second = client.fine_tuning.jobs.create(model="tiny", training_file=train.id, method={
        "type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}})
    assert second.status == "queued"  # one job trains at a time here

    # Pagination: newest first, one per page, the client follows `after` by itself.
    first_page = client.fine_tuning.jobs.list(limit=1)
    assert [j.id for j in first_page.data] == [second.id] and first_page.has_more
    assert [j.id for j in client.fine_tuning.jobs.list(limit=1)] == [second.id, job.id]
    assert [j.id for j in client.fine_tuning.jobs.list(after=second.id)] == [job.id]

    # Events while it runs, then a committed checkpoint.
    wait_for(lambda: client.fine_tuning.jobs.retrieve(job.id).status == "running", what="job 1 running")
    metrics = wait_for(lambda: [e for e in client.fine_tuning.jobs.list_events(job.id, limit=100).data if e.type == "metrics"
                                and (e.data or {}).get("train_loss") is not None], what="a metrics event")
    assert client.fine_tuning.jobs.retrieve(job.id).status == "running"
    assert metrics[0].message.startswith("Step ") and metrics[0].data["total_steps"] == 192
    wait_for(lambda: client.fine_tuning.jobs.checkpoints.list(job.id).data, what="a checkpoint")

    # Pause: the trainer commits a checkpoint and stops; the queued second job gets the slot.
    paused = client.fine_tuning.jobs.pause(job.id)
    assert paused.status == "paused"
    wait_for(lambda: any(m.startswith("Job paused at the checkpoint of step") for m in _messages(client, job.id)), what="pause done")
    ckpts = client.fine_tuning.jobs.checkpoints.list(job.id).data
    paused_at = ckpts[0].step_number
    assert 0 < paused_at < 192 and ckpts[0].fine_tuned_model_checkpoint.endswith(f"step-{paused_at:06d}")
    assert Path(ckpts[0].fine_tuned_model_checkpoint, "COMMITTED").exists() and ckpts[0].metrics.train_loss is not None
    assert [c.step_number for c in ckpts] == sorted((c.step_number for c in ckpts), reverse=True) and len(ckpts) <= 2  # keepLast 2

    # The second job starts; cancel it while it runs.
    wait_for(lambda: client.fine_tuning.jobs.retrieve(second.id).status == "running", what="job 2 running")
    cancelled = client.fine_tuning.jobs.cancel(second.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    wait_for(lambda: "Job cancelled" in " ".join(_messages(client, second.id)), what="job 2 stopped")
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.cancel(second.id)

    # Resume: continues from the checkpoint and finishes.
    assert client.fine_tuning.jobs.resume(job.id).status == "queued"
    done = wait_for(lambda: (j := client.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed") and j, timeout=300, what="job 1 done")
    assert done.status == "succeeded", done.error
    assert client.fine_tuning.jobs.retrieve(second.id).status == "cancelled"
    messages = _messages(client, job.id)
    assert f"Resumed from the checkpoint at step {paused_at}" in messages
    assert messages[0].startswith("The job has successfully completed")
    assert Path(done.fine_tuned_model, "adapter_config.json").exists()
    assert done.trained_tokens > 0 and done.finished_at >= done.created_at

    # The result file: per-step losses, from before and after the pause.
    rows = list(csv.DictReader(io.StringIO(client.files.content(done.result_files[0]).text)))
    steps = [int(r["step"]) for r in rows]
    assert steps[0] == 0 and steps[-1] == 192 and paused_at in steps
    evaluated = [int(r["step"]) for r in rows if r["valid_loss"]]  # evalEvery 8, and the final evaluation
    assert evaluated[0] == 0 and set(range(8, 192, 8)) <= set(evaluated) and evaluated[-1] == 192, evaluated
    assert float(rows[-1]["valid_loss"]) < float(rows[0]["valid_loss"])

    # Events page newest first with `after`.
    page1 = client.fine_tuning.jobs.list_events(job.id, limit=3)
    page2 = client.fine_tuning.jobs.list_events(job.id, limit=3, after=page1.data[-1].id)
    assert page1.has_more and len(page2.data) == 3
    assert not {e.id for e in page1.data} & {e.id for e in page2.data}
    times = [e.created_at for e in page1.data + page2.data]
    assert times == sorted(times, reverse=True)


def test_errors_come_back_as_the_clients_exception_types(local_api, tiny_files, tmp_path):
    client = _client(local_api)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "q", "completion": "a"}) + "\n" + json.dumps({"prompt": "q", "completion": 3}) + "\n")
    with pytest.raises(openai.BadRequestError) as e:
        client.files.create(file=bad.open("rb"), purpose="fine-tune")
    assert e.value.param == "file" and e.value.code == "invalid_file" and "line 2: 'completion' must be a string" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.files.create(file=("x.jsonl", b"{not json\n"), purpose="fine-tune")
    assert "line 1" in e.value.message or "cannot read" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.files.create(file=("x.jsonl", b'{"question": "no known format"}\n'), purpose="fine-tune")
    assert "fit no known format" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.files.create(file=(tiny_files / "train.jsonl").open("rb"), purpose="assistants")
    assert e.value.param == "purpose"

    with (tiny_files / "train.jsonl").open("rb") as f:
        train = client.files.create(file=f, purpose="fine-tune")
    with pytest.raises(openai.NotFoundError) as e:
        client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=train.id)
    assert e.value.code == "model_not_found" and e.value.param == "model" and "tiny" in e.value.message
    with pytest.raises(openai.NotFoundError) as e:
        client.fine_tuning.jobs.create(model="tiny", training_file="file-doesnotexist")
    assert e.value.param == "training_file"
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(model="tiny", training_file=train.id, hyperparameters={"n_epochs": -1})
    assert e.value.param == "hyperparameters.n_epochs" and e.value.type == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(model="tiny", training_file=train.id, method={"type": "dpo", "dpo": {}})
    assert e.value.code == "unsupported" and e.value.param == "method.type"
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(model="tiny", training_file=train.id, extra_body={"kubetune": {"distributed": {"nodes": 0}}})
    assert e.value.param == "kubetune.distributed.nodes"
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-nope")
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])
    assert "fine-tuning endpoints only" in e.value.message
    assert client.files.delete(train.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(train.id)
