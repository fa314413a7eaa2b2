"""The seed's code_executor example (Modal) ported to Airlock's Python client.

The changes from the seed: `import airlock as modal` instead of `import modal`; no App or
function decorators (this runs where you call it, against the daemon in AIRLOCK_SERVER); the
command is python3 (the host image has no `python`). The REPL part uses a Session, the daemon's
stateful interpreter, rather than re-running files; batch runs use execute_batch.

    python3 code_executor.py --code "print(sum(range(100)))"
"""

import argparse

import airlock as modal

# --- Sandboxed Execution Image ---
# The host image carries the seed's packages; pip_install only records them (see Image).
sandbox_image = (
    modal.Image.debian_slim(python_version="3.12")
    .pip_install("numpy", "pandas", "matplotlib", "scipy", "sympy", "requests")
)


# --- Secure Code Executor ---
def execute_code(code: str, timeout: int = 30, allow_network: bool = False, memory_mb: int = 512) -> dict:
    """Execute arbitrary Python code in a secure sandbox."""
    # Create sandbox with security constraints
    sb = modal.Sandbox.create(
        image=sandbox_image,
        timeout=timeout,
        memory=memory_mb,
        block_network=not allow_network,
    )
    try:
        # Write code to file
        with sb.open("/tmp/user_code.py", "w") as f:
            f.write(code)

        # Execute code
        p = sb.exec("python3", "/tmp/user_code.py", timeout=timeout)
        p.wait()

        stdout = p.stdout.read()
        stderr = p.stderr.read()

        return {
            "success": p.returncode == 0,
            "stdout": stdout,
            "stderr": stderr,
            "returncode": p.returncode,
        }
    except TimeoutError:
        return {"success": False, "stdout": "", "stderr": "Execution timed out", "returncode": -1}
    except Exception as e:
        return {"success": False, "stdout": "", "stderr": str(e), "returncode": -1}
    finally:
        sb.terminate()


# --- Interactive REPL Session ---
class REPLSession:
    """Maintain a persistent Python REPL session."""

    def __init__(self, session_id: str):
        self.session_id = session_id
        self.session = modal.Session.create(timeout=3600, idle_timeout=300)
        self.sb = self.session.sandbox

    def execute(self, code: str) -> dict:
        r = self.session.run(code, timeout=30)
        return {"stdout": r.stdout, "stderr": r.stderr, "success": r.success}

    def install_package(self, package: str) -> dict:
        r = self.session.install(package, timeout=120)
        return {"success": r.success, "output": r.output}

    def list_files(self, path: str = "/tmp") -> list:
        return list(self.sb.ls(path))

    def read_file(self, path: str) -> str:
        with self.sb.open(path, "r") as f:
            return f.read()

    def write_file(self, path: str, content: str) -> bool:
        with self.sb.open(path, "w") as f:
            f.write(content)
        return True

    def cleanup(self):
        self.session.terminate()


# --- Batch Code Execution ---
def execute_batch(code_snippets: list) -> list:
    """Execute multiple code snippets in parallel."""
    results = modal.execute_batch([
        {"code": s["code"], "timeout": s.get("timeout", 30), "allow_network": s.get("allow_network", False)}
        for s in code_snippets
    ])
    return [r.to_dict() for r in results]


# --- CLI ---
def main(code: str = "print('Hello from sandbox!')"):
    result = execute_code(code)

    print("=== Execution Result ===")
    print(f"Success: {result['success']}")
    print(f"Return code: {result['returncode']}")
    print(f"\n--- stdout ---\n{result['stdout']}")
    if result['stderr']:
        print(f"\n--- stderr ---\n{result['stderr']}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--code", default="print('Hello from sandbox!')")
    main(ap.parse_args().code)
