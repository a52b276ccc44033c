"""A fuzzing harness for the decode path and the servicer, against a live in-process server.

Every case is one call of one ``tfps.v1.ParameterServer`` method, with its request
messages as bytes (:mod:`fuzz.cases`). Hypothesis makes them three ways: protobuf
messages built field by field from the descriptors with biased values
(:mod:`fuzz.messages`), mutations of valid tensor streams (:mod:`fuzz.streams`), and
bytes that are not a valid message (:mod:`fuzz.raw`). Each case is sent with the
generated stub's paths and identity serializers to a server planted with a known state
(:mod:`fuzz.seed`, :mod:`fuzz.target`), and judged by one oracle (:mod:`fuzz.oracle`):
the call ends before its deadline, its status is never INTERNAL or UNKNOWN and a
refusal carries a reason, the server still answers the health check, and a refused call
(or a read) changes nothing of the state a client can observe.

:mod:`fuzz.run` drives it: a bounded, seeded smoke run in ``make test``, a long random
run in ``make fuzz`` that saves what it finds into the corpus (:mod:`fuzz.corpus`),
which ``tests/test_fuzz.py`` replays with the same oracle.
"""
