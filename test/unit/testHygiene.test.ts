/**
 * A missing tool fails a test, never skips it (issue 17.10): CI installs every tool the
 * tests use (.ci/run), so a skip would only hide a broken setup while CI stays green.
 * needTool throws; and no test file skips for anything but privileges this machine may lack
 * (root, loop devices, mounts, partitions) or a kernel feature, named here one by one.
 */
import assert from 'node:assert/strict'
import {readdirSync, readFileSync} from 'node:fs'
import {join, relative} from 'node:path'
import {test} from 'node:test'
import {fileURLToPath} from 'node:url'
import {needTool} from '../helpers/serve.js'

// dist/test/unit → repository root
const root = join(fileURLToPath(import.meta.url), '..', '..', '..', '..')

/** The `skip:` values a test may use: privileges, not tools. */
const PRIVILEGES = new Set(['needRoot', 'needLoop', 'needMount', 'needPartitions'])
/** `t.skip(...)` calls allowed, by file and a piece of their reason: a kernel feature, not a tool. */
const KERNEL_SKIPS: Array<[string, string]> = [['test/integration/blockVolume.test.ts', 'no MBR partition support in this kernel']]

function testFiles(dir: string): string[] {
  return readdirSync(dir, {withFileTypes: true}).flatMap((e) => (e.isDirectory() ? testFiles(join(dir, e.name)) : e.name.endsWith('.test.ts') ? [join(dir, e.name)] : []))
}

test('given a missing tool, needTool fails the test naming it (it does not skip); given none missing, it passes', () => {
  assert.throws(() => needTool('fio'), (e: unknown) => e instanceof Error && /missing tool: fio/.test(e.message) && /install it/.test(e.message))
  assert.doesNotThrow(() => needTool(false))
  assert.doesNotThrow(() => needTool(undefined))
})

test('no test file skips for a missing tool: interop tests never skip; elsewhere only a privilege or a named kernel feature may', () => {
  const files = testFiles(join(root, 'test')).filter((f) => !f.endsWith('testHygiene.test.ts'))
  assert.ok(files.length > 30, `found the test sources (${files.length}) under ${root}/test`)
  const bad: string[] = []
  for (const f of files) {
    const rel = relative(root, f)
    const text = readFileSync(f, 'utf8')
    // Test options ({skip: …} right after a test's name); a field named skip elsewhere is not one.
    for (const m of text.matchAll(/\{\s*skip\s*:\s*([^,})]+)/g)) {
      const value = m[1]!.trim()
      if (rel.startsWith('test/interop/') || !PRIVILEGES.has(value)) bad.push(`${rel}: {skip: ${value}}`)
    }
    for (const m of text.matchAll(/\b(?:t|ctx|context)\.skip\(([^)]*)/g)) {
      if (!KERNEL_SKIPS.some(([file, reason]) => file === rel && m[1]!.includes(reason))) bad.push(`${rel}: ${m[0]}`)
    }
    for (const m of text.matchAll(/\b(?:test|it|describe)\.(?:skip|todo)\b/g)) bad.push(`${rel}: ${m[0]}`)
  }
  assert.deepEqual(bad, [], 'use needTool(...) in the test (or a before hook) instead: a missing tool is a failure')
})
