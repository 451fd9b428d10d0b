"""Every REST endpoint, and every bad input: a clear 4xx, nothing written, the server still up."""

from __future__ import annotations

import io
import json
import time

import pytest
from PIL import Image

from app.main import create_app
from tests.app.conftest import ADMIN_TOKEN, make_settings, png_bytes


def _catalogue_state(dirs) -> tuple:
    import sqlite3

    with sqlite3.connect(dirs["root"] / "catalogue.db") as db:
        counts = tuple(db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                       for t in ("images", "captions", "index_versions", "index_entries"))
    files = sorted(str(p.relative_to(dirs["root"])) for p in dirs["root"].rglob("*")
                   if p.is_file() and ".thumbnails" not in p.parts and p.suffix not in (".db-wal", ".db-shm"))
    return counts, files


# --- searches ---------------------------------------------------------------------------------
def test_text_to_image_and_text_to_text(client):
    response = client.get("/api/search/text", params={"q": "a small red circle", "k": 5})
    assert response.status_code == 200
    body = response.json()
    assert body["index"] == "tiny" and body["mode"] == "text->image" and len(body["results"]) == 5
    first = body["results"][0]
    assert {"id", "thumbnail_url", "score", "captions", "path"} <= set(first)
    scores = [hit["score"] for hit in body["results"]]
    assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)
    assert set(body["timings_ms"]) == {"encode", "search", "metadata"}
    assert all(ms >= 0 for ms in body["timings_ms"].values())
    captions = client.get("/api/search/text", params={"q": "a small red circle", "target": "caption"}).json()
    assert captions["mode"] == "text->caption" and {"text", "image", "score"} <= set(captions["results"][0])


def test_paging_and_min_score(client):
    first = client.get("/api/search/text", params={"q": "a blue square", "k": 4}).json()["results"]
    second = client.get("/api/search/text", params={"q": "a blue square", "k": 4, "offset": 4}).json()["results"]
    everything = client.get("/api/search/text", params={"q": "a blue square", "k": 8}).json()["results"]
    assert [h["id"] for h in first + second] == [h["id"] for h in everything]
    cut = everything[3]["score"]
    kept = client.get("/api/search/text", params={"q": "a blue square", "k": 40, "min_score": cut}).json()
    assert kept["results"] and all(h["score"] >= cut for h in kept["results"])


def test_image_to_text_by_id_and_by_upload(client, gallery_ids):
    by_id = client.get("/api/search/image", params={"image_id": gallery_ids[0], "k": 3})
    assert by_id.status_code == 200 and by_id.json()["mode"] == "image->caption"
    upload = client.post("/api/search/image", files={"file": ("q.png", png_bytes(), "image/png")}, data={"k": 3})
    assert upload.status_code == 200 and len(upload.json()["results"]) == 3
    more_like = client.get("/api/search/image", params={"image_id": gallery_ids[0], "target": "image", "k": 5})
    assert gallery_ids[0] not in [h["id"] for h in more_like.json()["results"]]  # not the query itself


def test_arithmetic_get_post_and_rerank(client, gallery_ids):
    params = {"image_id": gallery_ids[0], "minus": ["red"], "plus": ["blue"], "k": 5}
    got = client.get("/api/search/arithmetic", params=params)
    assert got.status_code == 200 and got.json()["mode"] == "compose->image"
    posted = client.post("/api/search/arithmetic", data={"image_id": gallery_ids[0], "minus": "red", "plus": "blue",
                                                         "k": 5})
    assert [h["id"] for h in posted.json()["results"]] == [h["id"] for h in got.json()["results"]]
    upload = client.post("/api/search/arithmetic", files={"file": ("q.png", png_bytes(), "image/png")},
                         data={"minus": "red", "plus": "green", "k": 5, "rerank_top": 12})
    assert upload.status_code == 200 and len(upload.json()["results"]) == 5
    unknown = client.get("/api/search/arithmetic", params={"image_id": gallery_ids[0], "plus": ["zebra"]})
    assert unknown.status_code == 422 and unknown.json()["unknown_words"] == ["zebra"]


def test_arithmetic_is_the_normalised_sum_of_normalised_vectors(client, gallery_ids):
    import numpy as np

    def embed(**data):
        return np.array(client.post("/api/embed", data=data).json()["embedding"])

    image = np.array(client.post("/api/embed", files={"file": ("q.png", png_bytes(), "image/png")}).json()["embedding"])
    query = image - embed(text="red") + embed(text="blue")
    query /= np.linalg.norm(query)
    response = client.post("/api/search/arithmetic", files={"file": ("q.png", png_bytes(), "image/png")},
                           data={"minus": "red", "plus": "blue", "k": 5}).json()
    loaded = client.app.state.served.get("tiny").loaded
    for hit in response["results"]:  # each score is <query, stored image vector>
        assert hit["score"] == pytest.approx(float(loaded.image_vector(hit["id"]) @ query), abs=1e-5)
    everything = loaded.image_vectors(loaded.image_ids) @ query
    assert response["results"][0]["score"] == pytest.approx(float(everything.max()), abs=1e-5)


def test_compose_algebra_with_ids_texts_and_weights(client, gallery_ids):
    query = {"terms": [{"text": "a circle", "weight": 2}, {"image_id": gallery_ids[1]}, {"text": "red", "weight": -1}],
             "k": 4, "target": "caption"}
    response = client.post("/api/search/compose", data={"query": json.dumps(query)})
    assert response.status_code == 200 and response.json()["mode"] == "compose->caption"
    bad = client.post("/api/search/compose", data={"query": json.dumps({"terms": [{"text": "x", "image_id": 1}]})})
    assert bad.status_code == 400 and "exactly one" in bad.json()["detail"]
    missing_upload = client.post("/api/search/compose", data={"query": json.dumps({"terms": [{"upload": 0}]})})
    assert missing_upload.status_code == 400 and "0 file(s)" in missing_upload.json()["detail"]
    cancel = client.post("/api/search/compose", data={"query": json.dumps({"terms": [
        {"text": "red circle"}, {"text": "red circle", "weight": -1}]})})
    assert cancel.status_code == 400 and "cancel out" in cancel.json()["detail"]
    invalid = client.post("/api/search/compose", data={"query": "{not json"})
    assert invalid.status_code == 422 and "invalid query" in invalid.json()["detail"]


def test_embed_is_normalised(client):
    body = client.post("/api/embed", data={"text": "a red circle"}).json()
    assert body["dim"] == 32 and abs(sum(x * x for x in body["embedding"]) - 1) < 1e-4
    assert client.post("/api/embed", data={}).status_code == 400


def test_image_detail_thumbnail_health_stats_metrics(client, gallery_ids):
    detail = client.get(f"/api/images/{gallery_ids[0]}").json()
    assert detail["width"] == 32 and len(detail["captions"]) == 5
    thumb = client.get(detail["thumbnail_url"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(thumb.content)).size == (32, 32)
    assert client.get("/api/health").json() == {"status": "ok", "indexes": ["tiny"]}
    stats = client.get("/api/stats").json()
    assert stats["indexes"][0]["images"] == 40 and stats["indexes"][0]["captions"] == 200
    assert stats["default_index"] == "tiny" and stats["device"] == "cpu"
    metrics = client.get("/metrics").text
    assert 'imgsearch_requests_total{route="/api/stats",status="200"}' in metrics
    client.get("/api/search/text", params={"q": "a red circle"})
    metrics = client.get("/metrics").text
    assert 'imgsearch_query_stage_seconds_count{mode="text->image",stage="encode"}' in metrics
    assert client.get("/openapi.json").json()["paths"]["/api/search/text"]


# --- bad input: a clear 4xx, nothing written, the server stays up -----------------------------
BOMB = io.BytesIO()
Image.new("1", (20000, 20000)).save(BOMB, "PNG")
_noisy = io.BytesIO()
Image.effect_noise((64, 64), 60).convert("RGB").save(_noisy, "PNG")
NOISY = _noisy.getvalue()


@pytest.mark.parametrize("request_args, status, message", [
    (("get", "/api/search/text", {"params": {"q": "   "}}), 400, "empty"),
    (("get", "/api/search/text", {"params": {"q": "x" * 201}}), 400, "limit is 200"),
    (("get", "/api/search/text?q=%ff%fe", {}), 400, "not valid UTF-8"),
    (("get", "/api/search/text", {"params": {"q": "a", "k": -1}}), 422, "greater than or equal to 1"),
    (("get", "/api/search/text", {"params": {"q": "a", "k": 10**9}}), 422, "less than or equal to 100"),
    (("get", "/api/search/text", {"params": {"q": "a", "offset": -5}}), 422, "offset"),
    (("get", "/api/search/text", {"params": {"q": "a", "index": "nope"}}), 404, "unknown encoder/index 'nope'"),
    (("get", "/api/search/image", {"params": {"image_id": 999999}}), 404, "image 999999 is not in index"),
    (("get", "/api/images/999999", {}), 404, "no image with id 999999"),
    (("get", "/images/999999/thumb", {}), 404, "no image"),
    (("get", "/images/..%2F..%2Fetc%2Fpasswd/thumb", {}), 404, ""),
    (("get", "/api/images/..%2Fcatalogue.db", {}), 404, ""),
    (("get", "/api/images/catalogue.db", {}), 422, "integer"),
    (("get", "/api/images/100000000000000000000", {}), 422, "less than or equal"),
    (("get", "/images/100000000000000000000/thumb", {}), 422, "less than or equal"),
    (("post", "/api/search/arithmetic", {"files": {"file": ("a.txt", b"text", "text/plain")}, "data": {"plus": "red"}}),
     415, "not an image"),
    (("post", "/api/embed", {"files": {"file": ("a.png", b"", "image/png")}}), 400, "empty"),
    (("post", "/api/search/compose", {"data": {"query": json.dumps({"terms": [{"text": "a zebra"}]})}}), 422,
     "zebra"),
    (("get", "/static/..%2F..%2Fpyproject.toml", {}), 404, ""),
    (("post", "/api/search/image", {"files": {"file": ("a.png", b"", "image/png")}}), 400, "empty"),
    (("post", "/api/search/image", {"files": {"file": ("a.txt", b"hello there", "text/plain")}}), 415, "not an image"),
    (("post", "/api/search/image", {"files": {"file": ("a.png", NOISY[: len(NOISY) // 2], "image/png")}}), 400,
     "truncated"),
    (("post", "/api/search/image", {"files": {"file": ("a.png", b"\x89PNG" + b"0" * 300_000, "image/png")}}), 413,
     "limit is 200,000"),
    (("post", "/api/search/image", {"files": {"file": ("b.png", BOMB.getvalue(), "image/png")}}), 413, "too large"),
    (("post", "/api/search/image", {"data": {}}), 400, "exactly one"),
])
def test_bad_input_is_refused_clearly_and_writes_nothing(client, app_dirs, request_args, status, message):
    before = _catalogue_state(app_dirs)
    method, url, kwargs = request_args
    response = getattr(client, method)(url, **kwargs)
    assert response.status_code == status, response.text
    if message:
        assert message in response.json()["detail"]
    assert _catalogue_state(app_dirs) == before
    assert client.get("/api/health").status_code == 200  # still serving


def test_text_query_with_unknown_words_warns(client):
    body = client.get("/api/search/text", params={"q": "a red zebra"}).json()
    assert body["warnings"] and "zebra" in body["warnings"][0]


# --- admin -------------------------------------------------------------------------------------
def test_admin_needs_the_right_token(client):
    assert client.get("/api/admin/status").status_code == 401
    assert client.get("/api/admin/status", headers={"Authorization": "Bearer wrong"}).status_code == 403
    ok = client.get("/api/admin/status", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert ok.status_code == 200 and "tiny: version 1" in ok.json()["indexes"][0]
    reload = client.post("/api/admin/reload", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert reload.json() == {"versions": {"tiny": 1}}


def test_admin_reindex_of_an_unknown_index_is_404(client):
    response = client.post("/api/admin/reindex", params={"name": "nope"},
                           headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert response.status_code == 404 and "unknown index 'nope'" in response.json()["detail"]


def test_page_without_javascript_handles_empty_and_bad_fields(client, gallery_ids):
    empty = client.get("/", params={"mode": "image", "id": "", "k": "abc"})
    assert empty.status_code == 200 and "text/html" in empty.headers["content-type"]
    by_id = client.get("/", params={"mode": "image", "id": str(gallery_ids[0])})
    assert by_id.status_code == 200 and by_id.text.count('<li><span class="thumbs">') >= 10
    arithmetic = client.get("/", params={"mode": "arith", "id": str(gallery_ids[0]), "minus": "red", "plus": "blue"})
    assert arithmetic.status_code == 200 and 'class="card"' in arithmetic.text
    unknown = client.get("/", params={"mode": "arith", "id": str(gallery_ids[0]), "plus": "zebra"})
    assert unknown.status_code == 422 and "zebra" in unknown.text and "<html" in unknown.text


def test_admin_disabled_without_a_configured_token(app_dirs):
    from fastapi.testclient import TestClient

    with TestClient(create_app(make_settings(app_dirs, admin_token=None))) as client:
        response = client.post("/api/admin/reload", headers={"Authorization": "Bearer anything"})
        assert response.status_code == 403 and "disabled" in response.json()["detail"]


def test_admin_reindex_runs_in_the_background(client):

    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    assert client.post("/api/admin/reindex", headers=headers).json() == {"started": ["tiny"]}
    for _ in range(100):
        jobs = client.get("/api/admin/status", headers=headers).json()["jobs"]
        if jobs["tiny"] != "running":
            break
        time.sleep(0.1)
    assert "up to date" in jobs["tiny"]


def test_a_new_version_is_served_without_restart(client, app_dirs):
    from indexer.build import BuildOptions, build_index
    from indexer.db import session_factory

    assert client.get("/api/stats").json()["indexes"][0]["version"] == 1
    build_index(gallery=str(app_dirs["gallery"]), encoder_spec=str(app_dirs["checkpoint"]), name="tiny",
                index_dir=app_dirs["index_dir"], sessions=session_factory(app_dirs["url"]), full=True,
                options=BuildOptions(progress=False, workers=0))
    # The first request after the switch starts loading the new version in the background and is
    # answered from the old one; the new one serves as soon as it is loaded.
    versions = []
    for _ in range(100):
        versions.append(client.get("/api/search/text", params={"q": "a red circle"}).json()["version"])
        if versions[-1] == 2:
            break
        time.sleep(0.05)
    assert versions[-1] == 2 and set(versions) <= {1, 2}
    assert client.get("/api/stats").json()["indexes"][0]["version"] == 2


def test_no_index_yet_is_a_503(tmp_path):
    from fastapi.testclient import TestClient

    settings = make_settings({"url": f"sqlite:///{tmp_path / 'c.db'}", "index_dir": tmp_path / "none"})
    with TestClient(create_app(settings)) as client:
        response = client.get("/api/search/text", params={"q": "a"})
        assert response.status_code == 503 and "no index is built yet" in response.json()["detail"]
        assert client.get("/").status_code == 200  # the page still renders, with the reason


# --- several encoder families served side by side ----------------------------------------------
def test_a_dual_path_index_built_by_the_cli_is_served_beside_the_vse_one(app_dirs):
    import os
    import subprocess
    import sys

    from fastapi.testclient import TestClient

    from models import create_encoder
    from models.data import load_records
    from models.vocab import Vocabulary
    from tests.conftest import ROOT

    captions = [c for r in load_records(app_dirs["gallery"]) for c in r.captions]
    dual = create_encoder("dual_path_tiny", vocab=Vocabulary.build(captions),
                          overrides={"instance_loss": {"classes": 40}})
    checkpoint = dual.save(app_dirs["root"] / "dual.pt")
    env = {**os.environ, "DATABASE_URL": app_dirs["url"], "INDEX_DIR": str(app_dirs["index_dir"])}
    built = subprocess.run([sys.executable, "-m", "app.cli", "index", "--gallery", str(app_dirs["gallery"]),
                            "--encoder", str(checkpoint), "--name", "dual", "--workers", "0"],
                           capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert built.returncode == 0, built.stderr
    with TestClient(create_app(make_settings(app_dirs))) as client:
        stats = {i["name"]: i for i in client.get("/api/stats").json()["indexes"]}
        assert stats["dual"]["encoder"] == "dual_path_tiny" and stats["tiny"]["encoder"] == "vse_tiny_gru"
        assert stats["dual"]["images"] == 40
        bodies = {name: client.get("/api/search/text", params={"q": "a red circle", "k": 3, "index": name}).json()
                  for name in ("dual", "tiny")}
        assert all(body["index"] == name and len(body["results"]) == 3 for name, body in bodies.items())
        image_id = bodies["dual"]["results"][0]["id"]
        captions = client.get("/api/search/image", params={"image_id": image_id, "index": "dual"}).json()
        assert captions.get("encoder") == "dual_path_tiny" and captions["results"], captions


# --- GXN: a generated caption and an imagined image beside the results --------------------------
def test_gxn_index_adds_a_generated_caption_and_an_imagined_image(gxn_dirs):
    from fastapi.testclient import TestClient

    with TestClient(create_app(make_settings(gxn_dirs))) as client:
        body = client.get("/api/search/text", params={"q": "a red circle", "k": 3, "index": "gxn"}).json()
        assert body["encoder"] == "gxn_tiny" and len(body["results"]) == 3
        assert body["imagined_image_url"] == "/api/imagine?q=a+red+circle&index=gxn&version=1"
        picture = client.get(body["imagined_image_url"])
        assert picture.status_code == 200 and picture.headers["content-type"] == "image/png"
        assert picture.headers["cache-control"].startswith("public")
        stale = client.get("/api/imagine", params={"q": "a red circle", "index": "gxn", "version": 9})
        assert stale.content == picture.content and stale.headers["cache-control"] == "no-store"
        assert Image.open(io.BytesIO(picture.content)).size == (32, 32)
        assert client.get(body["imagined_image_url"]).content == picture.content  # seeded: one text, one picture
        other_seed = client.get("/api/imagine", params={"q": "a red circle", "index": "gxn", "seed": 7}).content
        assert other_seed != picture.content

        image_id = body["results"][0]["id"]
        by_id = client.get("/api/search/image", params={"image_id": image_id, "index": "gxn", "k": 3}).json()
        assert isinstance(by_id.get("generated_caption"), str) and "describe" in by_id["timings_ms"], by_id
        upload = client.post("/api/search/image", files={"file": ("q.png", png_bytes(), "image/png")},
                             data={"index": "gxn", "k": "3"}).json()
        assert isinstance(upload["generated_caption"], str) and len(upload["results"]) == 3
        # a generated caption only where captions are the target; an imagined image only for image results
        assert "generated_caption" not in client.get("/api/search/image", params={
            "image_id": image_id, "index": "gxn", "target": "image"}).json()
        assert "imagined_image_url" not in client.get("/api/search/text", params={
            "q": "a red circle", "index": "gxn", "target": "caption"}).json()


def test_encoders_without_generators_leave_the_fields_out_and_imagine_says_why(gxn_dirs):
    from fastapi.testclient import TestClient

    with TestClient(create_app(make_settings(gxn_dirs))) as client:
        text = client.get("/api/search/text", params={"q": "a red circle", "index": "tiny"}).json()
        assert "imagined_image_url" not in text
        image = client.get("/api/search/image", params={"image_id": text["results"][0]["id"], "index": "tiny"}).json()
        assert "generated_caption" not in image and image["results"]
        refused = client.get("/api/imagine", params={"q": "a red circle", "index": "tiny"})
        assert refused.status_code == 404 and "has no image generator" in refused.json()["detail"]
        empty = client.get("/api/imagine", params={"q": "   ", "index": "gxn"})
        assert empty.status_code == 400 and "empty" in empty.json()["detail"]
        missing = client.get("/api/search/image", params={"image_id": 999_999, "index": "gxn"})
        assert missing.status_code == 404
        for params, status in (({"index": "gxn"}, 422), ({"q": "a", "index": "nope"}, 404),
                               ({"q": "a", "index": "gxn", "seed": -1}, 422),
                               ({"q": "a" * 300, "index": "gxn"}, 400)):
            answer = client.get("/api/imagine", params=params)
            assert answer.status_code == status and answer.json()["detail"], (params, answer.text)


def test_a_gallery_file_gone_since_indexing_still_gets_captions_without_a_generated_one(gxn_dirs):
    from fastapi.testclient import TestClient
    from sqlalchemy import update

    from indexer.catalogue import ImageRow
    from indexer.db import session_factory

    with TestClient(create_app(make_settings(gxn_dirs))) as client:
        results = client.get("/api/search/text", params={"q": "a red circle", "index": "gxn"}).json()["results"]
        image_id = results[0]["id"]
        with session_factory(gxn_dirs["url"])() as session:  # the file moved away after indexing
            session.execute(update(ImageRow).where(ImageRow.id == image_id).values(
                file_path=str(gxn_dirs["root"] / "moved-away.png")))
            session.commit()
        body = client.get("/api/search/image", params={"image_id": image_id, "index": "gxn"}).json()
        assert body["results"] and "generated_caption" not in body
        assert any("no generated caption" in w and "can no longer be read" in w for w in body["warnings"])


# --- what a person reads: collapsed captions, relevance, query notes ----------------------------
def test_identical_captions_are_one_result_with_their_count_and_images(client, gallery_ids):
    params = {"image_id": gallery_ids[0], "k": 100}
    raw = [hit for offset in (0, 100)  # all 200 captions of the gallery, ranked
           for hit in client.get("/api/search/image", params={**params, "offset": offset, "collapse": "false"}
                                 ).json()["results"]]
    texts = [hit["text"] for hit in raw]
    assert len(texts) == 200 and len(set(texts)) < len(texts)  # the synthetic gallery repeats captions
    collapsed = client.get("/api/search/image", params=params).json()["results"]
    shown = [hit["text"] for hit in collapsed]
    assert shown == list(dict.fromkeys(texts))[:100]  # the distinct texts in rank order
    for hit in collapsed:
        owners = [r["image"]["id"] for r in raw if r["text"] == hit["text"]]
        assert hit["count"] == len(owners) and hit["image"]["id"] == owners[0]
        assert [image["id"] for image in hit["images"]] == list(dict.fromkeys(owners))[:10]
    # Paging walks the distinct texts.
    pages = [client.get("/api/search/image", params={**params, "k": 5, "offset": o}).json()["results"]
             for o in (0, 5)]
    assert [h["text"] for h in pages[0] + pages[1]] == shown[:10]


def test_relevance_is_the_calibrated_score_and_min_relevance_filters_on_it(client, app_dirs):
    from indexer.calibration import Calibration
    from indexer.faiss_store import FaissFileStore

    manifest = FaissFileStore(app_dirs["index_dir"]).current("tiny").manifest
    calibration = Calibration.from_manifest(manifest)
    assert calibration is not None and calibration.pairs == 200
    hits = client.get("/api/search/text", params={"q": "a red circle", "k": 40}).json()["results"]
    for hit in hits:
        assert hit["relevance"] == pytest.approx(float(calibration.relevance([hit["score"]])[0]), abs=1e-4)
    cut = sorted(h["relevance"] for h in hits)[20]
    kept = client.get("/api/search/text", params={"q": "a red circle", "k": 40, "min_relevance": cut}).json()
    expected = {h["id"] for h in hits if calibration.relevance([h["score"]])[0] >= cut}  # unrounded
    assert {h["id"] for h in kept["results"]} == expected and 0 < len(expected) < len(hits)
    bad = client.get("/api/search/text", params={"q": "a red circle", "min_relevance": 2})
    assert bad.status_code == 422 and "min_relevance" in bad.json()["detail"]


def test_plurals_and_spellings_are_read_and_the_reading_is_said(client):
    body = client.get("/api/search/text", params={"q": "two blue squares", "k": 3}).json()
    assert body["warnings"] == [] and body["notes"] == ["read 'squares' as 'square' (plural)"]
    same = client.get("/api/search/text", params={"q": "two blue square", "k": 3}).json()
    assert [h["id"] for h in body["results"]] == [h["id"] for h in same["results"]]
    grey = client.get("/api/search/text", params={"q": "a grey circle", "k": 1}).json()
    assert grey["warnings"] == [] and "'grey' as 'gray' (spelling)" in grey["notes"][0]


def test_compose_rejects_fields_it_does_not_take(client):
    query = json.dumps({"terms": [{"text": "a red circle"}], "k": 3})
    stray = client.post("/api/search/compose", data={"query": query, "k": "7"})
    assert stray.status_code == 422 and "unknown form field(s) k" in stray.json()["detail"]
    misspelt = client.post("/api/search/compose", data={"query": json.dumps({"terms": [{"text": "a"}], "kk": 3})})
    assert misspelt.status_code == 422 and "kk" in misspelt.json()["detail"]
    assert len(client.post("/api/search/compose", data={"query": query}).json()["results"]) == 3


def test_favicon_is_served(client):
    response = client.get("/favicon.ico")
    assert response.status_code == 200 and response.headers["content-type"].startswith("image/svg+xml")


def test_each_index_is_warmed_before_it_serves(app_dirs, monkeypatch):
    """The first query after start should not pay for thread pools and compiled graphs: loading a
    version runs a text and an image query through its encoder and both of its indexes."""
    from app.services.served import ServedIndexes
    from indexer.faiss_store import FaissFileStore, FaissVersion

    searched = []
    original = FaissVersion.search
    monkeypatch.setattr(FaissVersion, "search",
                        lambda self, modality, queries, k, **kw: searched.append((modality, kw["query_modality"]))
                        or original(self, modality, queries, k, **kw))
    ServedIndexes(FaissFileStore(app_dirs["index_dir"]), "tiny")
    # a text and an image query into each index (binary codes hash each kind of query its own way)
    assert sorted(searched) == [("caption", "caption"), ("caption", "image"), ("image", "caption"),
                                ("image", "image")]


# --- hostile input: non-UTF-8 form fields, and every error body as the OpenAPI schema says ------
def _multipart(fields: dict[str, bytes]) -> tuple[bytes, dict]:
    body = b"".join(b"--XX\r\nContent-Disposition: form-data; name=\"" + name.encode() + b"\"\r\n\r\n" + value + b"\r\n"
                    for name, value in fields.items()) + b"--XX--\r\n"
    return body, {"content-type": "multipart/form-data; boundary=XX"}


def test_form_fields_that_are_not_utf8_are_refused_by_name(client, gallery_ids):
    body, headers = _multipart({"image_id": str(gallery_ids[0]).encode(), "plus": b"\xff\xfeblue"})
    refused = client.post("/api/search/arithmetic", content=body, headers=headers)
    assert refused.status_code == 400 and refused.json()["detail"].startswith("form field 'plus' is not valid UTF-8")
    body, headers = _multipart({"text": b"caf\xe9"})  # Latin-1 "café"
    assert client.post("/api/embed", content=body, headers=headers).status_code == 400
    body, headers = _multipart({"text": "café".encode()})
    assert client.post("/api/embed", content=body, headers=headers).status_code == 200


def _openapi_operations(client):
    for path, operations in client.get("/openapi.json").json()["paths"].items():
        for method, operation in operations.items():
            yield path, method, operation


def test_every_declared_error_response_is_the_error_body(client):
    spec = client.get("/openapi.json").json()
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    for path, method, operation in _openapi_operations(client):
        for status, response in operation["responses"].items():
            if status.startswith(("4", "5")):
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, status)


HOSTILE = ["", "-1", "0", "abc", "9" * 40, "\x00", "nan", "1e309", "true"]


def _fields(spec: dict, operation: dict) -> list[dict]:
    """The operation's query, path and form parameters, each as {"name", "in"}."""
    fields = [p for p in operation.get("parameters", []) if p["in"] in ("query", "path")]
    for content in operation.get("requestBody", {}).get("content", {}).values():
        schema = content["schema"]
        if "$ref" in schema:
            schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
        fields += [{"name": name, "in": "form"} for name in schema.get("properties", {})]
    return fields


def test_hostile_parameters_get_a_declared_status_and_an_error_body(client):
    """A schema fuzz: every parameter of every operation, set to each hostile value in turn, gets
    a status the operation declares, and a 4xx body that parses as ErrorBody."""
    from urllib.parse import quote

    from app.schemas import ErrorBody

    spec = client.get("/openapi.json").json()
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    for path, method, operation in _openapi_operations(client):
        fields = _fields(spec, operation)
        for field in fields:
            for value in HOSTILE:
                url = path
                for other in (f for f in fields if f["in"] == "path"):
                    url = url.replace("{" + other["name"] + "}", quote(value, safe="") if other is field else "1")
                response = client.request(method.upper(), url,
                                          params={field["name"]: value} if field["in"] == "query" else None,
                                          data={field["name"]: value} if field["in"] == "form" else None,
                                          headers=admin if path.startswith("/api/admin") else None)
                where = f"{method} {path} {field['name']}={value!r}: {response.status_code}"
                assert response.status_code < 500 and str(response.status_code) in operation["responses"], where
                if response.status_code >= 400:
                    ErrorBody.model_validate(response.json())
