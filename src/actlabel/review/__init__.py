"""Stage 4: human review of the selected items.

- `queue`: which item each reviewer sees next (most suspicious first, leased), progress and pace
- `app`: the web app (`actlabel review DIR`); needs the `review` extra (starlette, uvicorn, jinja2)
- `terminal`: the same review in a terminal (`actlabel review DIR --terminal`)
- `simulate`: a reviewer that answers with the imported gold labels (`--simulate gold`)
- `adapters`: export to / import from Label Studio and Argilla

Nothing here is imported eagerly: the simulated reviewer and the adapters work without the web extra.
"""
