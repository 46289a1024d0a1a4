/**
 * What the npm package ships: the CLI and its docs, never the test support (the in-memory
 * and crash-recording file systems), the tests or the benchmarks (issue 17 item 5).
 */
import assert from 'node:assert/strict'
import {execFileSync} from 'node:child_process'
import {test} from 'node:test'
import {repoRoot} from '../helpers/cli.js'

test('given a build, when packed, then the package holds the CLI and no test support, tests or benchmarks', () => {
  // --ignore-scripts: prepack would rebuild; the tests run on the build already made.
  const out = execFileSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], {cwd: repoRoot, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore']})
  const [pack] = JSON.parse(out) as Array<{files: Array<{path: string}>}>
  const files = pack.files.map((f) => f.path)
  for (const needed of ['bin/run.js', 'dist/clonectl.cjs', 'oclif.manifest.json', 'man/clonectl.1']) assert.ok(files.includes(needed), `the package lacks ${needed}`)
  const shipped = files.filter((f) => /^dist\/(test|bench)\//.test(f) || /MemoryFs|CrashState/.test(f))
  assert.deepEqual(shipped, [], 'test support, tests or benchmarks in the package')
})
