// Compile chain/contracts/GradMeshNetwork.sol with the pinned solcjs and write
// chain/artifacts/GradMeshNetwork.json (committed, so Python installs need no compiler).
//
//   node chain/compile.mjs            # write the artifact
//   node chain/compile.mjs --stdout   # print the artifact JSON instead (used by tests)
import { createHash } from "node:crypto";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const require = createRequire(import.meta.url);
const solc = require("solc");

const here = dirname(fileURLToPath(import.meta.url));
const NAME = "GradMeshNetwork";
const SOURCE_FILE = `${NAME}.sol`;
const EVM_VERSION = "shanghai";

const source = readFileSync(join(here, "contracts", SOURCE_FILE), "utf8");
const input = {
  language: "Solidity",
  sources: { [SOURCE_FILE]: { content: source } },
  settings: {
    evmVersion: EVM_VERSION,
    optimizer: { enabled: true, runs: 200 },
    metadata: { bytecodeHash: "none" },
    outputSelection: {
      [SOURCE_FILE]: { [NAME]: ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] },
    },
  },
};

const output = JSON.parse(solc.compile(JSON.stringify(input)));
const problems = output.errors ?? [];
for (const p of problems) process.stderr.write(`${p.formattedMessage ?? p.message}\n`);
if (problems.some((p) => p.severity === "error")) process.exit(1);

const compiled = output.contracts[SOURCE_FILE][NAME];
const artifact = {
  contractName: NAME,
  abi: compiled.abi,
  bytecode: `0x${compiled.evm.bytecode.object}`,
  deployedBytecode: `0x${compiled.evm.deployedBytecode.object}`,
  solcVersion: solc.version(),
  evmVersion: EVM_VERSION,
  optimizer: { enabled: true, runs: 200 },
  sourceSha256: createHash("sha256").update(readFileSync(join(here, "contracts", SOURCE_FILE))).digest("hex"),
};
const text = `${JSON.stringify(artifact, null, 2)}\n`;
if (process.argv.includes("--stdout")) {
  process.stdout.write(text);
} else {
  mkdirSync(join(here, "artifacts"), { recursive: true });
  writeFileSync(join(here, "artifacts", `${NAME}.json`), text);
  process.stderr.write(`wrote artifacts/${NAME}.json (solc ${artifact.solcVersion}, ` +
    `${(compiled.evm.deployedBytecode.object.length / 2)} bytes runtime)\n`);
}
