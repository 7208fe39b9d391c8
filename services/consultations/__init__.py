"""Consultations: planning, agenda, working groups and registration of participants."""
