"""The ground floor: what every part of judgeflow shares — the records that travel the flow, its
metrics, the ports (protocols) through which stages reach outside systems, and the failure vocabulary.
Nothing here imports another judgeflow package."""
