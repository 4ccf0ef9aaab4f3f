"""The loopback fake Hub accepts the real client's create_repo and upload_folder."""

import pytest
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError

from mugv_testing import FakeHub


def test_upload_folder_round_trip(tmp_path):
    (tmp_path / "sub").mkdir()
    payload = {"config.json": b'{"a": 1}', "sub/weights.bin": bytes(range(256)) * 1000}
    for rel, data in payload.items():
        (tmp_path / rel).write_bytes(data)
    with FakeHub() as hub:
        assert hub.endpoint.startswith("http://127.0.0.1:")
        api = HfApi(endpoint=hub.endpoint, token=hub.token)
        url = api.create_repo("me/tiny", exist_ok=True)
        assert "me/tiny" in str(url)
        info = api.upload_folder(repo_id="me/tiny", folder_path=tmp_path)
        assert info.oid
        assert hub.files("me/tiny") == payload
        assert hub.unhandled == []


def test_bad_token_rejected():
    with FakeHub() as hub:
        api = HfApi(endpoint=hub.endpoint, token="wrong")
        with pytest.raises(HfHubHTTPError):
            api.create_repo("me/x")
