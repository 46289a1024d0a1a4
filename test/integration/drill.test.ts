/**
 * `clonectl drill`, the README's main job, through bin/: the self-contained drill on scratch
 * images (table and --json), and the drill of a real group into a scratch target with
 * --exec 'e2fsck -fn {}', which must leave the group's source untouched.
 */
import assert from 'node:assert/strict'
import {execFileSync} from 'node:child_process'
import * as fsp from 'node:fs/promises'
import {join} from 'node:path'
import {after, before, describe, test} from 'node:test'
import {Cli, cmp, has, sha256, tempDir} from '../helpers/cli.js'
import {needTool} from '../helpers/serve.js'

let dir: string
let cli: Cli

before(async () => {
  dir = await tempDir('drill')
  cli = new Cli(join(dir, 'state'))
})

after(async () => {
  await fsp.rm(dir, {recursive: true, force: true})
})

describe('clonectl drill on scratch images', () => {
  test('with no arguments it passes, prints its report as a table, and removes its scratch directory', async () => {
    const r = await cli.ok(['drill'], 0, {env: {TMPDIR: dir}})
    assert.match(r.stdout, /time to first host/i)
    assert.match(r.stdout, /PASS/)
    assert.doesNotMatch(r.stdout, /FAIL/)
    const left = (await fsp.readdir(dir)).filter((n) => n.startsWith('clonectl-drill'))
    assert.deepEqual(left, [], 'scratch directory removed')
  })

  test('--json prints one result object with the measurements and every check passed', async () => {
    const j = await cli.json(['drill'], 0, {env: {TMPDIR: dir}})
    assert.equal(j.ok, true)
    assert.equal(j.kind, 'scratch')
    assert.ok(Array.isArray(j.checks) && j.checks.length >= 3, JSON.stringify(j.checks))
    for (const c of j.checks) assert.equal(c.ok, true, `${c.name}: ${c.detail}`)
  })
})

describe('clonectl drill of a real group', () => {
  before(() => needTool(has('mke2fs', '-V') && has('e2fsck', '-V') ? false : 'e2fsprogs (mke2fs, e2fsck)'))
  test("with --target and --exec 'e2fsck -fn {}' it passes, the target equals the clone, and the source is untouched", async () => {
    const content = join(dir, 'content')
    await fsp.mkdir(join(content, 'db'), {recursive: true})
    for (let i = 0; i < 20; i++) await fsp.writeFile(join(content, 'db', `table-${i}.dat`), Buffer.alloc(64 * 1024, i))
    const src = join(dir, 'ext4-src.img')
    execFileSync('mke2fs', ['-q', '-F', '-t', 'ext4', '-d', content, src, '32M'], {stdio: 'ignore'})
    await cli.ok(['group', 'create', 'db', '--source', src])
    const clone = join(dir, 'ext4-clone.img')
    await cli.ok(['clone', 'add', 'db', 'nightly', '--path', clone, '--create'])
    await cli.ok(['clone', 'fracture', 'db', 'nightly'])
    const before = await sha256(src)
    const target = join(dir, 'drill-target.img')
    const j = await cli.json(['drill', 'db', 'nightly', '--target', target, '--exec', 'e2fsck -fn {}'])
    assert.equal(j.ok, true, JSON.stringify(j.checks))
    assert.ok(j.checks.some((c: {name: string; ok: boolean}) => /e2fsck/.test(c.name) && c.ok), 'the --exec check ran and passed')
    assert.ok(cmp(target, clone).same, 'the target is the clone')
    assert.equal(await sha256(src), before, 'the source is untouched')
    const s = await cli.status('db')
    assert.equal(s.clones[0].state, 'fractured', 'the clone is left as it was')
  })

  test('a failing --exec makes the drill fail with exit status 10, and the source is still untouched', async () => {
    const src = join(dir, 'ext4-src.img')
    const before = await sha256(src)
    const r = await cli.run(['drill', 'db', 'nightly', '--target', join(dir, 'drill-target2.img'), '--exec', 'false {}'])
    assert.equal(r.code, 10, `${r.stdout}\n${r.stderr}`)
    assert.equal(await sha256(src), before)
  })

  test('given an existing file as the target, when drill runs without --yes (no terminal, or --json), then it is refused and the file is untouched; with --yes it is overwritten', async () => {
    const target = join(dir, 'someones-file.img')
    const data = Buffer.alloc(32 * 1024 * 1024, 0x42)
    await fsp.writeFile(target, data)
    const r = await cli.run(['drill', 'db', 'nightly', '--target', target])
    assert.equal(r.code, 5, r.stderr)
    assert.match(r.stderr, new RegExp(`Overwrite the existing drill target ${target}: refused without confirmation`))
    assert.match(r.stderr, /--yes/)
    const j = await cli.json(['drill', 'db', 'nightly', '--target', target], 2)
    assert.match(j.error.message, /--json needs --yes/)
    assert.ok((await fsp.readFile(target)).equals(data), 'the existing file is untouched')
    const ok = await cli.json(['drill', 'db', 'nightly', '--target', target, '--yes'])
    assert.equal(ok.ok, true, JSON.stringify(ok.checks))
    assert.ok(cmp(target, join(dir, 'ext4-clone.img')).same, 'with --yes the target is the clone')
  })

  test('a target that is the source (or any volume of a group) is refused with exit status 5', async () => {
    const src = join(dir, 'ext4-src.img')
    const r = await cli.run(['drill', 'db', 'nightly', '--target', src])
    assert.equal(r.code, 5, r.stderr)
  })
})

describe('clonectl drill sizes and scratch files', () => {
  const scratchLeft = async (): Promise<string[]> => (await fsp.readdir(dir)).filter((n) => n.startsWith('clonectl-drill'))

  test('--size under the minimum is refused up front with the minimum (exit 2), and no scratch file is made', async () => {
    const j = await cli.json(['drill', '--size', '8M'], 2, {env: {TMPDIR: dir}})
    assert.match(j.error.message, /drill size 8388608 bytes is too small .*at least 16 MiB/)
    assert.match(j.error.fix, /--size 16M or more/)
    assert.deepEqual(await scratchLeft(), [])
  })

  test('--size 2G runs in chunks (no read of the whole source) and passes, and its scratch directory is removed', async () => {
    const j = await cli.json(['drill', '--size', '2G'], 0, {env: {TMPDIR: dir}, timeoutMs: 600_000})
    assert.equal(j.ok, true, JSON.stringify(j.checks))
    assert.equal(j.sizeBytes, 2 * 1024 ** 3)
    assert.deepEqual(await scratchLeft(), [])
  })

  test('when making the source fails, the drill fails naming mke2fs (exit 10) and removes its scratch directory', async () => {
    const bin = join(dir, 'fakebin')
    await fsp.mkdir(bin, {recursive: true})
    await fsp.writeFile(join(bin, 'mke2fs'), '#!/bin/sh\necho "mke2fs: No space left on device" >&2\nexit 1\n', {mode: 0o755})
    const j = await cli.json(['drill'], 10, {env: {TMPDIR: dir, PATH: `${bin}:${process.env.PATH}`}})
    assert.match(j.error.message, /mke2fs could not make the drill's .* ext4 source \(exit 1\): mke2fs: No space left on device/)
    assert.deepEqual(await scratchLeft(), [])
  })
})
