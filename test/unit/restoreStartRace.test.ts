/**
 * A restore started under `serve` while host requests arrive: a write held at the host gate
 * while the restore is being set up must go through the restore's rules (P set, never
 * overwritten by the copy), and a read issued once the restore was requested returns restored
 * data. The read used to pass the restore being set up and return the pre-restore source (the
 * bench's first-read row saw it on a loaded machine); the write was safe only because the
 * session happened to be installed one microtask before the held write resumed, and is now
 * installed before the gate opens.
 */
import assert from 'node:assert/strict'
import {mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {test} from 'node:test'
import {ForwardSync} from '../../src/engine/ForwardSync.js'
import {CloneGroup} from '../../src/group/CloneGroup.js'
import {addClone, createGroup, fractureClones} from '../../src/group/GroupAdmin.js'
import {GroupServer} from '../../src/group/GroupServer.js'
import {nodeFs} from '../../src/io/NodeDurableFs.js'
import {GroupStore} from '../../src/store/GroupStore.js'

const EXTENT = 64 * 1024
const SIZE = 64 * EXTENT

test('given a fractured clone and a source changed since, when a restore starts under serve while a host write and a read wait at the gate, then the write survives the restore and the read sees the clone', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'clonectl-race-'))
  const ctx = {fs: nodeFs, store: new GroupStore(nodeFs, join(dir, 'state'))}
  try {
    mkdirSync(join(dir, 'state', 'groups'), {recursive: true, mode: 0o700})
    writeFileSync(join(dir, 'src.img'), Buffer.alloc(SIZE, 0x11))
    await createGroup(ctx, {name: 'g', sourcePath: join(dir, 'src.img'), extentSize: EXTENT})
    const g = await CloneGroup.open(ctx, 'g', {writable: true})
    await addClone(g, {clone: 'c', path: join(dir, 'c.img'), create: true})
    const sync = await ForwardSync.start(g, {clone: 'c', command: 'test'})
    if (sync instanceof ForwardSync) await sync.run()
    await fractureClones(g, ['c'])
    await g.close()

    const server = await GroupServer.start(ctx, 'g', {command: 'test serve', socket: join(dir, 'nbd.sock')})
    try {
      // The source changes after the fracture (extents 0..7), so the restore copies them back.
      await server.host.write(0, Buffer.alloc(8 * EXTENT, 0x22), false)
      await server.host.flush()
      const started = server.startRestore({clone: 'c'})
      // Issued after the restore was requested, while it is being set up (the gate is shut).
      const write = server.host.write(2 * EXTENT, Buffer.alloc(EXTENT, 0x33), false)
      const read = server.host.read(5 * EXTENT, 16)
      const {done} = await started
      await write
      assert.deepEqual([...(await read)], Array(16).fill(0x11), 'a read after the restore was requested returns the clone, not the pre-restore source')
      await done
      await server.host.flush()
      const src = readFileSync(join(dir, 'src.img'))
      assert.equal(src[2 * EXTENT], 0x33, 'the host write made during the restore was overwritten by the restore')
      assert.equal(src[0], 0x11, 'the restore copied the clone back')
    } finally {
      await server.stop()
    }
  } finally {
    rmSync(dir, {recursive: true, force: true})
  }
})
