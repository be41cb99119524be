"""xml-pipeline: asyncio message routing for agent organisms."""
