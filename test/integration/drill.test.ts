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

describe('clonectl drill of a real group', {skip: has('mke2fs', '-V') && has('e2fsck', '-V') ? false : 'needs e2fsprogs (mke2fs, e2fsck)'}, () => {
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

  test('a target that is the source (or any volume of a group) is refused with exit status 5', async () => {
    const src = join(dir, 'ext4-src.img')
    const r = await cli.run(['drill', 'db', 'nightly', '--target', src])
    assert.equal(r.code, 5, r.stderr)
  })
})
