"""``concord demo`` loads the sources' consultations, and loading twice changes nothing."""

from __future__ import annotations

from fastapi.testclient import TestClient

from api.main import create_app
from infra import demo
from infra.bootstrap import System


def test_the_demo_is_realistic_and_idempotent(system: System) -> None:
    first = demo.load(system)
    head = system.store.head_position()
    assert first.applied > 50
    again = demo.load(system)
    assert again.applied == 0
    assert system.store.head_position() == head, "a second load appends nothing"

    with TestClient(create_app(system)) as client:
        jakarta = client.get(f"/v1/consultations/{demo.uid('consultation', 'jakarta-2018')}").json()
        assert jakarta["status"] == "completed"
        assert jakarta["starts_at"] == "2018-02-20T09:00:00+07:00"
        assert len(jakarta["agenda"]) == 6
        assert len(jakarta["working_groups"]) == 7
        assert jakarta["counts"]["registered"] == len(demo.PARTICIPANTS)
        assert jakarta["counts"]["checked_in"] == len(demo.PARTICIPANTS)
        assert len(jakarta["counts"]["by_country"]) == 8, "NGOs from eight member states"
        series = client.get(f"/v1/series/{demo.uid('series', 'national-consultations')}").json()
        assert series["progress"]["done"] == ["VN"]
        hanoi = client.get(f"/v1/consultations/{demo.uid('consultation', 'hanoi-2019')}").json()
        assert hanoi["city"] == "Hà Nội"
        open_now = client.get("/v1/consultations", params={"status": "registration_open"}).json()
        assert open_now["total"] == 1


def test_an_organisation_profile_lists_the_consultations_it_attended(system: System) -> None:
    demo.load(system)
    _, secret = system.keys.create("organiser", "profile test")
    hrwg = demo.uid("organisation", "Human Rights Working Group")
    with TestClient(create_app(system)) as client:
        public = client.get(f"/v1/organisations/{hrwg}").json()
        assert public["consultations_attended"] is None
        known = client.get(
            f"/v1/organisations/{hrwg}", headers={"Authorization": f"Bearer {secret}"}
        ).json()
    attended = {c["title"].split(" ")[1]: c for c in known["consultations_attended"]}
    assert set(attended) == {"CSO", "follow-up:"}, "Jakarta 2018 and tomorrow's follow-up"
    assert attended["CSO"]["participants"] == 2
    assert attended["CSO"]["title"].startswith("Regional CSO Consultation")
