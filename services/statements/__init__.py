"""Joint statements: drafting, amendments, endorsements, compiling and publishing."""
