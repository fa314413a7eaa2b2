// Drives the stock piston-client against the Airlock daemon at PISTON_SERVER (the key as URL
// userinfo, the client's only credential channel) and prints every answer as one JSON object.
import piston from "piston-client";

const client = piston({ server: process.env.PISTON_SERVER });
const out = {};
out.runtimes = await client.runtimes();
out.python = await client.execute("python", "import sys\nprint(sum(map(int, sys.argv[1:])), input())", { stdin: "in\n" });
out.c = await client.execute("c", "#include <stdio.h>\nint main(int c, char **v) { printf(\"%d %s\\n\", c, v[3]); return 0; }");
out.go = await client.execute("go", "package main\nimport \"fmt\"\nfunc main() { fmt.Println(\"go\") }");
out.javascript = await client.execute("javascript", "console.log(process.argv.slice(2).join('+'))");
out.compileError = await client.execute("c++", "int main( {");
out.timeout = await client.execute("python", "print('before', flush=True)\nwhile True: pass", { runTimeout: 1000 });
out.unknown = await client.execute("cobol", "DISPLAY 'HI'.");
out.badKey = await piston({ server: process.env.PISTON_BAD_SERVER }).execute("python", "print(1)");
console.log(JSON.stringify(out));
