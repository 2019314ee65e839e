// Validates Kubernetes objects against the real schemas: the OpenAPI schemas of Kubernetes
// (`kubernetes-models`) and the CRD schemas of Istio and Cilium (`@kubernetes-models/istio`,
// `@kubernetes-models/cilium`), each through the model class's `validate()`.
//
//   node integration/export/validate.mjs FILE
//
// FILE holds one JSON object per line. The packages are looked up in the directories of
// NODE_PATH (ES modules do not read NODE_PATH themselves, so this script does). Exit 0 when every
// object is valid, 1 with every error otherwise, 2 when the packages or a schema are missing. An
// object whose apiVersion/kind has no schema here is an error, never skipped.

import { existsSync, readFileSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { pathToFileURL } from 'node:url';

const INSTALL =
  'npm install --prefix target/node-validate kubernetes-models@5 @kubernetes-models/istio@3 @kubernetes-models/cilium@4';

function fail(code, message) {
  process.stderr.write(`validate.mjs: ${message}\n`);
  process.exit(code);
}

const file = process.argv[2];
if (!file) fail(2, 'usage: node validate.mjs FILE (one JSON object per line)');
const roots = (process.env.NODE_PATH || '').split(delimiter).filter(Boolean);
if (roots.length === 0) fail(2, `NODE_PATH names no node_modules directory; install with: ${INSTALL}`);

// Where the model class of apiVersion/kind lives, relative to a node_modules directory.
function candidates(apiVersion, kind) {
  const [group, version] = apiVersion.includes('/') ? apiVersion.split('/') : ['', apiVersion];
  if (group === '') return [`kubernetes-models/${version}/${kind}.js`];
  if (group.endsWith('.istio.io')) return [`@kubernetes-models/istio/${group}/${version}/${kind}.js`];
  if (group === 'cilium.io') return [`@kubernetes-models/cilium/cilium.io/${version}/${kind}.js`];
  return [`kubernetes-models/${group}/${version}/${kind}.js`];
}

function locate(relative) {
  for (const root of roots) {
    const path = join(root, relative);
    if (existsSync(path)) return path;
  }
  return null;
}

for (const pkg of ['kubernetes-models', '@kubernetes-models/istio', '@kubernetes-models/cilium']) {
  if (!locate(join(pkg, 'package.json'))) fail(2, `${pkg} is not installed under ${roots.join(', ')}; run: ${INSTALL}`);
}

const classes = new Map();
async function modelOf(apiVersion, kind) {
  const key = `${apiVersion}/${kind}`;
  if (!classes.has(key)) {
    let found = null;
    for (const relative of candidates(apiVersion, kind)) {
      const path = locate(relative);
      if (path) {
        const module = await import(pathToFileURL(path).href);
        found = module[kind] ?? null;
        break;
      }
    }
    classes.set(key, found);
  }
  return classes.get(key);
}

function describeErrors(error) {
  const details = Array.isArray(error?.errors)
    ? error.errors.map((e) => `${e.instancePath || '/'} ${e.message}${e.params ? ' ' + JSON.stringify(e.params) : ''}`)
    : [];
  return details.length > 0 ? details : [String(error?.message ?? error)];
}

const lines = readFileSync(file, 'utf8').split('\n').filter((l) => l.trim() !== '');
const problems = [];
let valid = 0;
for (const [i, line] of lines.entries()) {
  let object;
  try {
    object = JSON.parse(line);
  } catch (e) {
    problems.push(`line ${i + 1}: not JSON: ${e.message}`);
    continue;
  }
  const what = `line ${i + 1} ${object.apiVersion} ${object.kind} ${object.metadata?.namespace ?? ''}/${object.metadata?.name ?? ''}`;
  const Model = await modelOf(object.apiVersion, object.kind);
  if (!Model) {
    problems.push(`${what}: no schema for ${object.apiVersion} ${object.kind} (looked for ${candidates(object.apiVersion, object.kind).join(', ')}; run: ${INSTALL})`);
    continue;
  }
  try {
    new Model(object).validate();
    valid += 1;
  } catch (e) {
    for (const d of describeErrors(e)) problems.push(`${what}: ${d}`);
  }
}
if (problems.length > 0) {
  process.stderr.write(problems.join('\n') + '\n');
  process.stderr.write(`validate.mjs: ${problems.length} problem(s), ${valid} of ${lines.length} object(s) valid\n`);
  process.exit(1);
}
process.stdout.write(`validate.mjs: ${valid} object(s) valid\n`);
