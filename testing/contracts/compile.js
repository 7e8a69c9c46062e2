// Compiles a Solidity file with solc-js and prints {contract, abi, bytecode, methodIdentifiers,
// solcVersion} as JSON on stdout. Usage: node testing/contracts/compile.js [File.sol [Contract]]
"use strict";
const fs = require("fs");
const path = require("path");
const solc = require("solc");

const file = path.resolve(process.argv[2] || path.join(__dirname, "TestToken.sol"));
const contract = process.argv[3] || path.basename(file, ".sol");
const source = path.basename(file);

const input = {
  language: "Solidity",
  sources: { [source]: { content: fs.readFileSync(file, "utf8") } },
  settings: {
    optimizer: { enabled: true, runs: 200 },
    evmVersion: "cancun",
    outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.methodIdentifiers"] } },
  },
};

const output = JSON.parse(solc.compile(JSON.stringify(input)));
const errors = (output.errors || []).filter((e) => e.severity === "error");
if (errors.length) {
  for (const e of errors) process.stderr.write(e.formattedMessage + "\n");
  process.exit(1);
}
const compiled = output.contracts[source] && output.contracts[source][contract];
if (!compiled) {
  process.stderr.write(`contract ${contract} not found in ${file}\n`);
  process.exit(1);
}
process.stdout.write(
  JSON.stringify({
    contract,
    abi: compiled.abi,
    bytecode: "0x" + compiled.evm.bytecode.object,
    methodIdentifiers: compiled.evm.methodIdentifiers,
    solcVersion: solc.version(),
  }) + "\n",
);
