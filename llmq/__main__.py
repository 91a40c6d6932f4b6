from llmq.cli import entry

entry()
