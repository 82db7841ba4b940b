"""Running one claimed job: in a supervised subprocess (ML work) or inline (light io work)."""
