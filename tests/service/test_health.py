from fastapi.testclient import TestClient

from dentalmim import __version__
from service.main import create_app


def test_healthz_reports_version() -> None:
    client = TestClient(create_app())
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "version": __version__}
