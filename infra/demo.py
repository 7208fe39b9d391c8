"""``concord demo``: a realistic data set built from the sources, loaded through the commands.

The Jakarta regional consultation of 20-21 February 2018 (organised by a human-rights NGO
coalition, NGOs from eight member states, an agenda, working groups on the seven areas), the
Hanoi national workshop of 18 December 2019 in a series across the member states, and a
virtual follow-up starting tomorrow with registration open. Organisation and participant names
are realistic but illustrative. Every id is derived from a name, so loading twice changes
nothing: a command that was already applied is refused by its own rule and skipped.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

from infra.bootstrap import System
from services.consultations import commands as c
from services.consultations.model import CONSULTATION
from services.decider import Context, Decider
from services.errors import DomainError
from services.organisations.commands import RegisterOrganisation
from services.organisations.model import ORGANISATION
from services.people import person_id
from services.ports import Metadata
from services.series.commands import JoinSeries, LaunchSeries
from services.series.model import SERIES

NAMESPACE = uuid.UUID("0b7d7a43-2f0e-4c8e-9d4c-5f1a8e6c2b90")
#: Refusals that mean "this step was loaded before".
ALREADY = {
    "organisation-already-registered",
    "consultation-already-planned",
    "series-already-launched",
    "already-registered",
    "duplicate-identifier",
    "working-group-already-formed",
    "thematic-area-in-use",
    "consultation-already-held",
}


def uid(*parts: str) -> UUID:
    return uuid.uuid5(NAMESPACE, "/".join(parts))


ORGANISATIONS: list[tuple[str, str | None, str, str]] = [
    ("Human Rights Working Group", "HRWG", "network", "ID"),
    ("Migrant CARE", None, "ngo", "ID"),
    ("Serikat Buruh Migran Indonesia", "SBMI", "trade_union", "ID"),
    ("Humanitarian Organization for Migration Economics", "HOME", "ngo", "SG"),
    ("Transient Workers Count Too", "TWC2", "ngo", "SG"),
    ("Tenaganita", None, "ngo", "MY"),
    ("North South Initiative", "NSI", "ngo", "MY"),
    ("MAP Foundation", None, "ngo", "TH"),
    ("Migrant Working Group", "MWG", "network", "TH"),
    ("Center for Migrant Advocacy", "CMA", "ngo", "PH"),
    ("Migrante International", None, "migrant_association", "PH"),
    ("Legal Clinic Myanmar", "LCM", "ngo", "MM"),
    ("Future Light Center", None, "migrant_association", "MM"),
    ("Trung tâm Phát triển và Hội nhập", "CDI", "ngo", "VN"),
    ("Hội Liên hiệp Phụ nữ Việt Nam", "VWU", "ngo", "VN"),
    ("Persatuan Pekerja Asing Brunei", None, "migrant_association", "BN"),
    ("Institute for Population and Social Research, มหาวิทยาลัยมหิดล", "IPSR", "academic", "TH"),
    ("Ministry of Labour, Invalids and Social Affairs", "MOLISA", "ministry", "VN"),
    ("ASEAN Committee on Migrant Workers", "ACMW", "intergovernmental", "ID"),
]

PARTICIPANTS: list[tuple[str, str, str, str]] = [
    # (name, organisation acronym or name, role, country)
    ("Rafendi Djamin", "HRWG", "facilitator", "ID"),
    ("Daniel Awigra", "HRWG", "delegate", "ID"),
    ("Anis Hidayah", "Migrant CARE", "speaker", "ID"),
    ("Wahyu Susilo", "Migrant CARE", "delegate", "ID"),
    ("Hariyanto Suwarno", "SBMI", "delegate", "ID"),
    ("Sheena Kanwar", "HOME", "delegate", "SG"),
    ("Alex Au", "TWC2", "delegate", "SG"),
    ("Glorene Das", "Tenaganita", "speaker", "MY"),
    ("Adrian Pereira", "NSI", "delegate", "MY"),
    ("Brahm Press", "MAP Foundation", "resource_person", "TH"),
    ("สมชาย ใจดี", "MWG", "delegate", "TH"),
    ("Ellene Sana", "CMA", "speaker", "PH"),
    ("Joanna Concepcion", "Migrante International", "delegate", "PH"),
    ("Thet Thet Aung", "LCM", "delegate", "MM"),
    ("Ko Min Htike", "Future Light Center", "observer", "MM"),
    ("Hà Thị Minh Đức", "CDI", "delegate", "VN"),
    ("Nguyễn Thị Thu Hằng", "VWU", "delegate", "VN"),
    ("Siti Aminah", "Persatuan Pekerja Asing Brunei", "delegate", "BN"),
    ("Sureeporn Punpuing", "IPSR", "resource_person", "TH"),
]

JAKARTA = ZoneInfo("Asia/Jakarta")


def at(day: date, hour: int, minute: int = 0, zone: ZoneInfo = JAKARTA) -> datetime:
    return datetime.combine(day, time(hour, minute), zone).astimezone(UTC)


@dataclass
class Loader:
    system: System
    progress: Callable[[str], None]
    applied: int = 0
    skipped: int = 0

    def run(self, decider: Decider[Any, Any], stream: UUID, command: Any, now: datetime) -> None:
        try:
            outcome = self.system.bus.handle(
                decider,
                stream,
                command,
                metadata=Metadata(actor="concord demo", correlation_id="demo"),
                context=Context(now=now, actor="concord demo"),
            )
            if outcome.changed:
                self.applied += 1
            else:
                self.skipped += 1
        except DomainError as exc:
            if exc.code not in ALREADY:
                raise
            self.skipped += 1
        self.progress(type(command).__name__)


def steps() -> int:
    """How many commands the demo runs (for the progress bar)."""
    return sum(1 for _ in _plan(None))


def load(system: System, progress: Callable[[str], None] = lambda _: None) -> Loader:
    loader = Loader(system, progress)
    for decider, stream, command, now in _plan(loader):
        loader.run(decider, stream, command, now)
    system.projector.catch_up()
    return loader


def _plan(_: Loader | None) -> Iterator[tuple[Decider[Any, Any], UUID, Any, datetime]]:
    setup = datetime(2018, 1, 8, 9, 0, tzinfo=UTC)
    ids = {}
    for name, acronym, kind, country in ORGANISATIONS:
        oid = uid("organisation", name)
        ids[acronym or name] = oid
        yield (
            ORGANISATION,
            oid,
            RegisterOrganisation(
                oid,
                name,
                kind,
                country,
                acronym=acronym,
                website=f"https://{(acronym or name.split()[0]).lower()}.example.org",
            ),
            setup,
        )

    # -- Jakarta, 20-21 February 2018 ------------------------------------------------------
    jkt = uid("consultation", "jakarta-2018")
    day1, day2 = date(2018, 2, 20), date(2018, 2, 21)
    yield (
        CONSULTATION,
        jkt,
        c.PlanConsultation(
            consultation_id=jkt,
            title="Regional CSO Consultation on the Implementation of the ASEAN Consensus "
            "on the Rights of Migrant Workers",
            theme="A regional action plan on the ASEAN Consensus",
            scope="regional",
            host_country="ID",
            city="Jakarta",
            venue="Hotel Ibis Tamarin",
            mode="in_person",
            timezone="Asia/Jakarta",
            starts_at=at(day1, 9),
            ends_at=at(day2, 17),
            organiser_id=ids["HRWG"],
            partner_ids=(ids["IPSR"],),
            capacity=40,
            thematic_areas=c.DEFAULT_THEMATIC_AREAS,
            objectives=(
                "Gather CSOs in the region to discuss the ASEAN Consensus",
                "Develop a regional action plan and joint recommendations",
            ),
        ),
        setup,
    )
    yield CONSULTATION, jkt, c.OpenRegistration(jkt, at(date(2018, 2, 16), 17)), setup
    agenda = [
        (
            "Opening plenary: the ASEAN Consensus, ten years on",
            "plenary",
            day1,
            9,
            10,
            None,
            [("Rafendi Djamin", "HRWG")],
        ),
        (
            "Panel: what the Consensus does and does not protect",
            "panel",
            day1,
            10,
            12,
            None,
            [
                ("Anis Hidayah", "Migrant CARE"),
                ("Glorene Das", "Tenaganita"),
                ("Ellene Sana", "CMA"),
            ],
        ),
        ("Working groups by thematic area", "working_group", day1, 13, 17, None, []),
        ("Working groups report back", "plenary", day2, 9, 12, None, []),
        (
            "Drafting the joint statement",
            "working_group",
            day2,
            13,
            16,
            None,
            [("Sureeporn Punpuing", "IPSR")],
        ),
        ("Closing plenary", "plenary", day2, 16, 17, None, [("Daniel Awigra", "HRWG")]),
    ]
    for title, kind, day, start, end, area, speakers in agenda:
        yield (
            CONSULTATION,
            jkt,
            c.ScheduleSession(
                jkt,
                uid("session", "jakarta-2018", title),
                title,
                kind,
                at(day, start),
                at(day, end),
                area,
                tuple(c.SpeakerDetails(uid("person", n), n, ids[o]) for n, o in speakers),
            ),
            setup,
        )
    for area in c.DEFAULT_THEMATIC_AREAS:
        yield (
            CONSULTATION,
            jkt,
            c.FormWorkingGroup(jkt, uid("working-group", "jakarta-2018", area), area),
            setup,
        )
    signup = datetime(2018, 2, 1, 3, 0, tzinfo=UTC)
    for i, (name, organisation, role, country) in enumerate(PARTICIPANTS):
        email = f"{uid('email', name).hex[:10]}@participants.example.org"
        yield (
            CONSULTATION,
            jkt,
            c.RegisterParticipant(
                consultation_id=jkt,
                registration_id=uid("registration", "jakarta-2018", name),
                person_id=person_id(email),
                name=name,
                email=email,
                role=role,
                organisation_id=ids[organisation],
                country=country,
            ),
            signup + timedelta(hours=i),
        )
    yield CONSULTATION, jkt, c.CloseRegistration(jkt), datetime(2018, 2, 17, tzinfo=UTC)
    for i, (name, *_rest) in enumerate(PARTICIPANTS):
        registration = uid("registration", "jakarta-2018", name)
        yield CONSULTATION, jkt, c.CheckIn(jkt, registration), at(day1, 8)
        area = c.DEFAULT_THEMATIC_AREAS[i % len(c.DEFAULT_THEMATIC_AREAS)]
        yield (
            CONSULTATION,
            jkt,
            c.AssignToWorkingGroup(jkt, registration, uid("working-group", "jakarta-2018", area)),
            at(day1, 12),
        )
    yield CONSULTATION, jkt, c.CompleteConsultation(jkt), at(day2, 18)

    # -- A series across the member states, and Hanoi, 18 December 2019 -----------------
    series = uid("series", "national-consultations")
    planned = ("ID", "MY", "TH", "VN", "MM", "KH", "LA", "PH", "SG", "BN")
    yield (
        SERIES,
        series,
        LaunchSeries(
            series,
            "National consultations on the ASEAN Consensus across the member states",
            planned,
            "One national consultation workshop in each ASEAN member state.",
        ),
        datetime(2019, 1, 15, tzinfo=UTC),
    )
    hanoi = uid("consultation", "hanoi-2019")
    hcm = ZoneInfo("Asia/Ho_Chi_Minh")
    hn_day = date(2019, 12, 18)
    yield (
        CONSULTATION,
        hanoi,
        c.PlanConsultation(
            consultation_id=hanoi,
            title="National consultation workshop on the ASEAN Consensus",
            theme="Phát triển và Hội nhập: protecting Vietnamese migrant workers",
            scope="national",
            host_country="VN",
            city="Hà Nội",
            mode="in_person",
            timezone="Asia/Ho_Chi_Minh",
            starts_at=at(hn_day, 8, 30, hcm),
            ends_at=at(hn_day, 17, 0, hcm),
            organiser_id=ids["CDI"],
            co_organiser_ids=(ids["MOLISA"],),
            partner_ids=(ids["ACMW"],),
            capacity=60,
            series_id=series,
        ),
        datetime(2019, 11, 1, tzinfo=UTC),
    )
    yield SERIES, series, JoinSeries(series, hanoi, "VN"), datetime(2019, 11, 1, tzinfo=UTC)
    yield CONSULTATION, hanoi, c.CompleteConsultation(hanoi), at(hn_day, 18, 0, hcm)

    # -- A virtual follow-up starting tomorrow, registration open -------------------------
    tomorrow = datetime.now(UTC).date() + timedelta(days=1)
    manila = ZoneInfo("Asia/Manila")
    follow_up = uid("consultation", "follow-up")  # planned once, on the first load
    now = datetime.now(UTC)
    yield (
        CONSULTATION,
        follow_up,
        c.PlanConsultation(
            consultation_id=follow_up,
            title="Regional follow-up: national action plans on the ASEAN Consensus",
            scope="regional",
            host_country="PH",
            mode="virtual",
            virtual_url="https://meet.example.org/concord-follow-up",
            timezone="Asia/Manila",
            starts_at=at(tomorrow, 9, 0, manila),
            ends_at=at(tomorrow, 12, 0, manila),
            organiser_id=ids["HRWG"],
            capacity=100,
            thematic_areas=c.DEFAULT_THEMATIC_AREAS,
        ),
        now,
    )
    yield CONSULTATION, follow_up, c.OpenRegistration(follow_up, at(tomorrow, 8, 0, manila)), now
    # Three of Jakarta's participants sign up again: each gets a confirmation at once and the
    # "starts tomorrow" reminder within a minute (both land in var/mail in embedded mode).
    for name, organisation, role, country in PARTICIPANTS[:3]:
        email = f"{uid('email', name).hex[:10]}@participants.example.org"
        yield (
            CONSULTATION,
            follow_up,
            c.RegisterParticipant(
                consultation_id=follow_up,
                registration_id=uid("registration", "follow-up", name),
                person_id=person_id(email),
                name=name,
                email=email,
                role=role,
                organisation_id=ids[organisation],
                country=country,
            ),
            now,
        )
