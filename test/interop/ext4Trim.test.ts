/**
 * TRIM keeps volumes sparse end to end (issue 16 item 3): ext4 on a served source, through
 * nbdfuse + a loop device (the loop driver turns discards into fallocate PUNCH_HOLE on the
 * FUSE file, nbdfuse into NBD_CMD_TRIM).
 *
 * Given an ext4 source with a mirrored (synchronized) clone and a fractured one, when 48 MiB
 * of files are written through the export, the fractured clone synced (and fractured again), then the files
 * deleted and `fstrim` run: the source's and the mirrored clone's allocation (`du`) drop by
 * most of those 48 MiB; syncing the fractured clone again makes its allocation drop too; all
 * three are byte-identical. With TRIM written as zeros (koffi not loaded) the allocations
 * would stay: this test fails then.
 *
 * Needs root, /dev/fuse, nbdfuse, fusermount3, losetup, mount, mke2fs and fstrim.
 */
import assert from 'node:assert/strict'
import {randomBytes} from 'node:crypto'
import {existsSync} from 'node:fs'
import * as fsp from 'node:fs/promises'
import {join} from 'node:path'
import {after, before, describe, test} from 'node:test'
import {type Mounted, mountExport} from '../helpers/nbdMount.js'
import {MiB, type Served, clonectlOk, has, isRoot, runOk, sameContent, startServe, statusJson, tempDir} from '../helpers/serve.js'

const SIZE = 128 * MiB
const FILES = 48 * MiB
const tools = ['nbdfuse', 'fusermount3', 'losetup', 'mount', 'mke2fs', 'fstrim'].filter((t) => !has(t, '--version') && !has(t, '-V'))
const missing = !isRoot ? 'root (for losetup and mount)' : !existsSync('/dev/fuse') ? '/dev/fuse (the fuse kernel module)' : tools.length ? `${tools.join(', ')} (install nbdfuse, fuse3, e2fsprogs, util-linux)` : undefined

let dir: string
let state: string
let served: Served | undefined
let mounted: Mounted | undefined

/** Allocated bytes of a file (st_blocks × 512): what `du` shows. */
async function du(path: string): Promise<number> {
  return (await fsp.stat(path)).blocks * 512
}

before(async () => {
  assert.equal(missing, undefined, `this test needs ${missing}`)
  dir = await tempDir('ext4trim')
  state = join(dir, 'state')
})

after(async () => {
  await mounted?.detach()
  if (served) await served.stop('SIGKILL')
  await fsp.rm(dir, {recursive: true, force: true})
})

describe('ext4 on a served source: fstrim frees space on the source and the clones', () => {
  test('given files written through the export, when they are deleted and fstrim runs, then du of the source and of the clones drops', async () => {
    const src = join(dir, 'src.img')
    const mirrored = join(dir, 'mirrored.img')
    const fractured = join(dir, 'fractured.img')
    await runOk('mke2fs', ['-q', '-F', '-t', 'ext4', src, `${SIZE / 1024}k`])
    await clonectlOk(state, ['group', 'create', 'e', '--source', src, '--extent-size', '64K'])
    await clonectlOk(state, ['clone', 'add', 'e', 'm', '--path', mirrored, '--create'])
    await clonectlOk(state, ['clone', 'add', 'e', 'f', '--path', fractured, '--create'])
    await clonectlOk(state, ['clone', 'fracture', 'e', 'f'])
    served = await startServe(state, 'e')

    // Given: files written through the export, the fractured clone synced to them.
    mounted = await mountExport(dir, served.uri, 'a')
    for (let i = 0; i < FILES / (8 * MiB); i++) await fsp.writeFile(join(mounted.mnt, `file${i}.bin`), randomBytes(8 * MiB))
    await runOk('sync', ['-f', mounted.mnt])
    await clonectlOk(state, ['clone', 'sync', 'e', 'f'])
    // A sync leaves it synchronized (mirrored): fractured again, only its sync below sees the trim.
    await clonectlOk(state, ['clone', 'fracture', 'e', 'f'])
    const full = {src: await du(src), mirrored: await du(mirrored), fractured: await du(fractured)}
    for (const [name, bytes] of Object.entries(full)) assert.ok(bytes >= FILES, `${name} holds the files (${bytes} bytes)`)

    // When: the files are deleted and the file system trimmed.
    for (let i = 0; i < FILES / (8 * MiB); i++) await fsp.rm(join(mounted.mnt, `file${i}.bin`))
    await runOk('sync', ['-f', mounted.mnt])
    await runOk('fstrim', [mounted.mnt])
    await runOk('sync', ['-f', mounted.mnt])
    await mounted.detach()
    mounted = undefined

    // Then: the source and the mirrored clone are punched, not filled with zeros.
    const freed = (before: number, after: number): number => before - after
    const srcNow = await du(src)
    const mirroredNow = await du(mirrored)
    assert.ok(freed(full.src, srcNow) >= FILES * 0.9, `source du ${full.src} -> ${srcNow}: the deleted files' blocks are freed`)
    assert.ok(freed(full.mirrored, mirroredNow) >= FILES * 0.9, `mirrored clone du ${full.mirrored} -> ${mirroredNow}`)
    assert.ok(mirroredNow <= srcNow, `mirrored clone du ${mirroredNow} <= source du ${srcNow}`)
    const s = await statusJson(state, 'e')
    assert.equal(s.clones.find((c) => c.name === 'm')?.state, 'synchronized', 'the mirrored clone stayed synchronized')
    assert.ok((s.clones.find((c) => c.name === 'f')?.dirtyExtents ?? 0) > 0, 'the trim dirtied the fractured clone')

    // And a sync of the fractured clone punches it too (its holes are not written as zeros).
    await clonectlOk(state, ['clone', 'sync', 'e', 'f'])
    const fracturedNow = await du(fractured)
    assert.ok(freed(full.fractured, fracturedNow) >= FILES * 0.9, `fractured clone du ${full.fractured} -> ${fracturedNow} after its sync`)
    assert.ok(fracturedNow <= srcNow, `synced clone du ${fracturedNow} <= source du ${srcNow}`)

    await served.stop('SIGTERM')
    served = undefined
    assert.ok(await sameContent(src, mirrored), 'source and mirrored clone are byte-identical')
    assert.ok(await sameContent(src, fractured), 'source and synced clone are byte-identical')
  })
})
