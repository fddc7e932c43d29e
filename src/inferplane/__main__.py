from inferplane.cli import app

app(prog_name="inferplane")
