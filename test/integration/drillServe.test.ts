/**
 * Issue 18 item 2: `clonectl drill GROUP CLONE --target PATH` while `serve` owns the group
 * (the README's systemd setup) is carried out through serve, with the same report as
 * without it; --exec runs in the caller. A clone serve mirrors host writes to is refused.
 */
import assert from 'node:assert/strict'
import * as fsp from 'node:fs/promises'
import {join} from 'node:path'
import {after, before, describe, test} from 'node:test'
import {Cli, cmp, MiB, randomImage, sha256, tempDir} from '../helpers/cli.js'
import {startServe} from '../helpers/serve.js'

let dir: string
let cli: Cli

before(async () => {
  dir = await tempDir('drill-serve')
  cli = new Cli(join(dir, 'state'))
})
after(async () => {
  await fsp.rm(dir, {recursive: true, force: true})
})

/** The parts of a drill report that do not depend on timing. */
function stable(r: {kind: string; content: string; sizeBytes: number; bytesCopied: number; codCopies: number; checks: Array<{name: string; ok: boolean; detail: string}>; ok: boolean}): unknown {
  return {kind: r.kind, content: r.content, sizeBytes: r.sizeBytes, bytesCopied: r.bytesCopied, codCopies: r.codCopies, checks: r.checks, ok: r.ok}
}

describe('clonectl drill of a group that serve owns', () => {
  test('runs through serve and gives the same report as without serve; the target is the clone and the source is untouched', async () => {
    const source = join(dir, 'src.img')
    const clone = join(dir, 'c1.img')
    await randomImage(source, 8 * MiB, 3)
    await cli.ok(['group', 'create', 'd', '--source', source])
    await cli.ok(['clone', 'add', 'd', 'c1', '--path', clone, '--create'])
    await cli.ok(['clone', 'fracture', 'd', 'c1'])
    const exec = `cmp {} ${clone}`
    const offline = await cli.json(['drill', 'd', 'c1', '--target', join(dir, 'offline.img'), '--exec', exec])
    assert.equal(offline.ok, true, JSON.stringify(offline.checks))

    const served = await startServe(cli.stateDir, 'd')
    try {
      const before = await sha256(source)
      // A relative target: serve runs elsewhere, so it must be told the absolute path.
      const r = await cli.run(['drill', 'd', 'c1', '--target', 'served.img', '--exec', exec, '--json'], {cwd: dir})
      assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`)
      const viaServe = JSON.parse(r.stdout)
      assert.deepEqual(stable(viaServe), stable(offline), 'the same report')
      assert.equal(viaServe.checks.length, 2, 'the copy check and the --exec check')
      assert.ok(cmp(join(dir, 'served.img'), clone).same, 'the target is the clone')
      assert.equal(await sha256(source), before, 'the source is untouched')
      assert.equal((await cli.status('d')).server?.pid, served.proc.pid, 'serve still owns the group')

      // A synchronized clone is mirrored by serve: no single point in time to drill.
      await cli.ok(['clone', 'sync', 'd', 'c1'])
      const mirrored = await cli.run(['drill', 'd', 'c1', '--target', join(dir, 'mirrored.img')])
      assert.equal(mirrored.code, 6, mirrored.stderr)
      assert.match(mirrored.stderr, /clone c1 of group d is synchronized: serve mirrors host writes to it/)
      assert.match(mirrored.stderr, /clonectl clone fracture d c1/)
    } finally {
      await served.stop()
    }
  })
})
