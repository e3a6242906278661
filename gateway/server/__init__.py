"""How the app is served: the event loop that accepts every waiting connection, uvicorn's protocol with deadlines and
one write per answer, the loop gate, the completion routes dispatched before FastAPI's stack, request ids, the
process's stop steps and garbage-collector settings. Nothing here knows labels or members."""
