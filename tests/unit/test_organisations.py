"""Organisation rules, given events → when command → then events or error."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import uuid4

import pytest

from services.decider import Context
from services.organisations.commands import RegisterOrganisation, ReviseOrganisation
from services.organisations.errors import OrganisationAlreadyRegistered, UnknownOrganisation
from services.organisations.events import OrganisationRegistered, OrganisationRevised
from services.organisations.model import ORGANISATION

CTX = Context(now=datetime(2018, 2, 1, tzinfo=UTC))


def given(*events):  # type: ignore[no-untyped-def]
    return ORGANISATION.fold(events)


def registered(oid):  # type: ignore[no-untyped-def]
    return OrganisationRegistered(
        oid, "Human Rights Working Group", "HRWG", "ngo", "ID", "info@hrwg.example", None
    )


def test_registering_a_new_organisation() -> None:
    oid = uuid4()
    command = RegisterOrganisation(
        oid, "Human Rights Working Group", "ngo", "ID", acronym="HRWG", email="info@hrwg.example"
    )
    assert ORGANISATION.decide(given(), command, CTX) == [registered(oid)]


def test_registering_twice_is_refused() -> None:
    oid = uuid4()
    with pytest.raises(OrganisationAlreadyRegistered):
        ORGANISATION.decide(
            given(registered(oid)), RegisterOrganisation(oid, "X", "ngo", "ID"), CTX
        )


def test_revising_records_only_what_changed() -> None:
    oid = uuid4()
    state = given(registered(oid))
    events = ORGANISATION.decide(
        state,
        ReviseOrganisation(
            oid, name="Human Rights Working Group", country="ID", website="https://hrwg.example"
        ),
        CTX,
    )
    assert events == [OrganisationRevised(oid, website="https://hrwg.example")]
    assert ORGANISATION.decide(state, ReviseOrganisation(oid, kind="ngo"), CTX) == []
    assert ORGANISATION.fold(events, state).website == "https://hrwg.example"


def test_revising_an_unknown_organisation_is_refused() -> None:
    with pytest.raises(UnknownOrganisation):
        ORGANISATION.decide(given(), ReviseOrganisation(uuid4(), name="X"), CTX)
