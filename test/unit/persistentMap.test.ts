/**
 * PersistentMap on real files (DESIGN §3, §4): the file format and a create/open round trip;
 * every way a map file can be untrustworthy (each a CorruptStateError naming the file, never
 * an empty map); set ahead and clear behind as seen after a reopen; checkpoint tickets,
 * including a set that comes after the ticket; group commit, counted in datasyncs; replaceAll;
 * a failed write; a fast-check model of every call against what memory and disk hold; and
 * the checked pages of format version 2: a damaged D page (all dirty, reported, repaired), the
 * damage a sector CRC must catch, a damaged P page (named error, or damaged: 'clear'), a torn
 * slot (fallback, seq never reused), and the conversion of a version-1 file.
 */
import assert from 'node:assert/strict'
import * as fsp from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {after, before, describe, test} from 'node:test'
import fc from 'fast-check'
import {CorruptStateError, VolumeIoError} from '../../src/errors/errors.js'
import type {DurableFile, DurableFs, FileStat, OpenOptions} from '../../src/io/DurableFs.js'
import {nodeFs} from '../../src/io/NodeDurableFs.js'
import {crc32c} from '../../src/map/crc32c.js'
import {ExtentBitmap} from '../../src/map/ExtentBitmap.js'
import {encodeHeader, encodeSlot, mapFileSize, PAGE, PersistentMap, type CheckpointTicket, type MapExpectation, type MapHeader} from '../../src/map/PersistentMap.js'

const EXTENT = 64 * 1024
// Not a multiple of the extent size, and more than one bitmap page (4096*8 bits) of extents.
const VOLUME = 40_000 * EXTENT + 123
const COUNT = Math.ceil(VOLUME / EXTENT)
const header: MapHeader = {kind: 'delta', extentSize: EXTENT, volumeSize: VOLUME, extentCount: COUNT, operationId: 'op-1234'}
const expect: MapExpectation = {kind: 'delta', extentSize: EXTENT, volumeSize: VOLUME}

let dir: string
let n = 0
before(async () => {
  dir = await fsp.mkdtemp(join(tmpdir(), 'clonectl-pmap-'))
})
after(async () => {
  await fsp.rm(dir, {recursive: true, force: true})
})
const fresh = (): string => join(dir, `m${n++}.map`)

/** A DurableFs that counts datasyncs per file, can hold them back, and can make them fail. */
class ProbeFs implements DurableFs {
  readonly datasyncs = new Map<string, number>()
  /** While set, every datasync waits for it before going to the disk. */
  hold?: Promise<void>
  /** When set, datasync fails with this errno. */
  failWith?: string
  constructor(private readonly inner: DurableFs) {}

  syncsOf(path: string): number {
    return this.datasyncs.get(path) ?? 0
  }

  /** Hold datasyncs until the returned function is called. */
  holdSyncs(): () => void {
    let release = (): void => undefined
    this.hold = new Promise<void>((r) => {
      release = () => {
        this.hold = undefined
        r()
      }
    })
    return release
  }

  async open(path: string, opts?: OpenOptions): Promise<DurableFile> {
    return new ProbeFile(this, await this.inner.open(path, opts))
  }
  rename(from: string, to: string): Promise<void> {
    return this.inner.rename(from, to)
  }
  fsyncDir(d: string): Promise<void> {
    return this.inner.fsyncDir(d)
  }
  unlink(p: string): Promise<void> {
    return this.inner.unlink(p)
  }
  mkdirp(d: string, mode?: number): Promise<void> {
    return this.inner.mkdirp(d, mode)
  }
  readdir(d: string): Promise<string[]> {
    return this.inner.readdir(d)
  }
  exists(p: string): Promise<boolean> {
    return this.inner.exists(p)
  }
  stat(p: string): Promise<FileStat> {
    return this.inner.stat(p)
  }
  readFile(p: string): Promise<Buffer> {
    return this.inner.readFile(p)
  }
  realpath(p: string): Promise<string> {
    return this.inner.realpath(p)
  }
}

class ProbeFile implements DurableFile {
  readonly path: string
  constructor(
    private readonly probe: ProbeFs,
    private readonly inner: DurableFile,
  ) {
    this.path = inner.path
  }
  read(buf: Uint8Array, position: number, length?: number): Promise<number> {
    return this.inner.read(buf, position, length)
  }
  write(buf: Uint8Array, position: number): Promise<void> {
    return this.inner.write(buf, position)
  }
  async datasync(): Promise<void> {
    if (this.probe.hold) await this.probe.hold
    if (this.probe.failWith) throw Object.assign(new Error(`${this.probe.failWith}: i/o error, fdatasync`), {code: this.probe.failWith})
    await this.inner.datasync()
    this.probe.datasyncs.set(this.path, this.probe.syncsOf(this.path) + 1)
  }
  size(): Promise<number> {
    return this.inner.size()
  }
  truncate(length: number): Promise<void> {
    return this.inner.truncate(length)
  }
  close(): Promise<void> {
    return this.inner.close()
  }
}

/** Let pending promise callbacks and I/O completions run. */
const ticks = async (k = 5): Promise<void> => {
  for (let i = 0; i < k; i++) await new Promise((r) => setImmediate(r))
}

/** Has the promise settled (after letting callbacks run)? */
async function settled(p: Promise<unknown>): Promise<boolean> {
  let done = false
  p.then(
    () => (done = true),
    () => (done = true),
  )
  await ticks()
  return done
}

async function openRejects(path: string, exp: MapExpectation, pattern: RegExp, fix = /clone sync GROUP CLONE --full/): Promise<void> {
  await assert.rejects(PersistentMap.open(nodeFs, path, exp), (error: unknown) => {
    assert.ok(error instanceof CorruptStateError, `expected CorruptStateError, got ${String(error)}`)
    assert.ok(error.message.includes(path), `message ${JSON.stringify(error.message)} should name ${path}`)
    assert.match(error.message, pattern)
    assert.equal(error.exitCode, 7)
    assert.match(error.fix ?? '', fix)
    return true
  })
}

async function reopen(path: string): Promise<PersistentMap> {
  return PersistentMap.open(nodeFs, path, {...expect, operationId: header.operationId})
}

/**
 * The bitmap bytes of a version-2 map file, decoded here from the documented layout (not
 * through PersistentMap): per page the slot whose 8 sectors all pass their CRC32C over
 * (page, slot, sector, seq, payload) with one seq, the highest seq winning. Fails when a page has
 * no valid slot.
 */
function decodeV2(raw: Buffer, count: number): Buffer {
  const bytes = Math.ceil(count / 8)
  const out = Buffer.alloc(bytes)
  for (let p = 0; p * 4000 < bytes; p++) {
    let best: {seq: number; at: number} | undefined
    for (const slot of [0, 1]) {
      const at = PAGE + (2 * p + slot) * PAGE
      let seq = -1
      let ok = true
      for (let k = 0; k < 8; k++) {
        const o = at + k * 512
        const id = Buffer.alloc(16)
        id.writeUInt32LE(p, 0)
        id.writeUInt16LE(slot, 4)
        id.writeUInt16LE(k, 6)
        raw.copy(id, 8, o, o + 8)
        const s = Number(raw.readBigUInt64LE(o))
        if (raw.readUInt32LE(o + 8) !== crc32c(raw.subarray(o + 12, o + 512), crc32c(id)) || (seq >= 0 && s !== seq)) ok = false
        seq = s
      }
      if (ok && (!best || seq > best.seq)) best = {seq, at}
    }
    assert.ok(best, `page ${p} has a valid slot`)
    for (let k = 0; k < 8; k++) {
      const from = p * 4000 + k * 500
      if (from >= bytes) break
      raw.copy(out, from, best.at + k * 512 + 12, best.at + k * 512 + 12 + Math.min(500, bytes - from))
    }
  }
  return out
}

/** The set runs of the map file as it is on disk now. */
async function onDisk(path: string, count = COUNT): Promise<Array<[number, number]>> {
  const raw = await fsp.readFile(path)
  return [...ExtentBitmap.fromBytes(count, decodeV2(raw, count)).runs()]
}

async function patch(path: string, at: number, bytes: Buffer, fixCrc = false): Promise<void> {
  const fh = await fsp.open(path, 'r+')
  await fh.write(bytes, 0, bytes.length, at)
  if (fixCrc) {
    const head = Buffer.alloc(104)
    await fh.read(head, 0, 104, 0)
    const crc = Buffer.alloc(4)
    crc.writeUInt32LE(crc32c(head))
    await fh.write(crc, 0, 4, 104)
  }
  await fh.close()
}

const u32 = (v: number): Buffer => {
  const b = Buffer.alloc(4)
  b.writeUInt32LE(v)
  return b
}
const u64 = (v: number): Buffer => {
  const b = Buffer.alloc(8)
  b.writeBigUInt64LE(BigInt(v))
  return b
}

describe('PersistentMap: the file, create and open', () => {
  test('the file layout: header fields, CRC32C, zero rest; each bitmap page in two slots of self-checking sectors, little-endian bit order', async () => {
    const p = fresh()
    const init = new ExtentBitmap(COUNT)
    for (const e of [0, 9, 31999, 32000, COUNT - 1]) init.set(e)
    await (await PersistentMap.create(nodeFs, p, header, init)).close()
    const raw = await fsp.readFile(p)
    // 40000 extents: 5000 bitmap bytes, two pages of 4000, each in two 4096-byte slots.
    assert.equal(raw.length, PAGE + 4 * PAGE, 'header page + two pages × two slots')
    assert.equal(raw.toString('latin1', 0, 8), 'CLNMAP01')
    assert.equal(raw.readUInt32LE(8), 2, 'version')
    assert.equal(raw.readUInt32LE(12), 1, 'kind: delta')
    assert.equal(raw.readUInt32LE(16), EXTENT)
    assert.equal(raw.readUInt32LE(20), 0, 'reserved')
    assert.equal(raw.readBigUInt64LE(24), BigInt(VOLUME))
    assert.equal(raw.readBigUInt64LE(32), BigInt(COUNT))
    assert.equal(raw.toString('latin1', 40, 47), 'op-1234')
    assert.ok(raw.subarray(47, 104).every((b) => b === 0), 'operation id NUL-padded to 64 bytes')
    assert.equal(raw.readUInt32LE(104), crc32c(raw.subarray(0, 104)))
    assert.ok(raw.subarray(108, PAGE).every((b) => b === 0), 'rest of the header page is zero')
    // A new file holds each page in slot 0 at seq 1 and in slot 1 at seq 0, same payload.
    for (const [page, slot, seq] of [[0, 0, 1], [0, 1, 0], [1, 0, 1], [1, 1, 0]]) {
      const at = PAGE + (2 * page + slot) * PAGE
      for (let k = 0; k < 8; k++) assert.equal(raw.readBigUInt64LE(at + k * 512), BigInt(seq), `page ${page} slot ${slot} sector ${k} seq`)
    }
    const s0 = PAGE // page 0, slot 0
    assert.equal(raw[s0 + 12], 0b0000_0001, 'extent 0: payload byte 0 bit 0')
    assert.equal(raw[s0 + 13], 0b0000_0010, 'extent 9: payload byte 1 bit 1')
    assert.equal(raw[s0 + 7 * 512 + 511], 0x80, 'extent 31999: last bit of page 0 (sector 7, last byte)')
    const s2 = PAGE + 2 * PAGE // page 1, slot 0
    assert.equal(raw[s2 + 12], 0x01, 'extent 32000: first bit of page 1')
    // Extent 40000: bitmap byte 5000 = page 1, payload byte 1000 = sector 2, byte 0, bit 0.
    assert.equal(COUNT - 1, 40_000)
    assert.equal(raw[s2 + 2 * 512 + 12], 0x01, 'last extent')
    assert.ok(raw.subarray(s2 + 2 * 512 + 13, s2 + 3 * 512).every((b) => b === 0), 'padding is zero')
    assert.ok(raw.subarray(s2 + 7 * 512 + 12, s2 + 8 * 512).every((b) => b === 0), 'padding is zero to the end of the slot')
    assert.deepEqual(ExtentBitmap.fromBytes(COUNT, decodeV2(raw, COUNT)).toBytes(), init.toBytes())
  })

  test('create → open round trip keeps the header and the bits', async () => {
    const p = fresh()
    const init = new ExtentBitmap(COUNT)
    for (const e of [0, 1, 31, 32, 4095, 32767, 32768, 32769, COUNT - 1]) init.set(e)
    const m = await PersistentMap.create(nodeFs, p, header, init)
    assert.ok(m.bits.equals(init))
    init.clear(0)
    assert.ok(m.get(0), 'create copies the initial bitmap')
    init.set(0)
    await m.close()
    const r = await reopen(p)
    try {
      assert.deepEqual(r.header, header)
      assert.equal(r.path, p)
      assert.ok(r.bits.equals(init))
      assert.equal(r.hasPendingWork(), false)
    } finally {
      await r.close()
    }
    // Without an operation id expectation any id is accepted.
    await (await PersistentMap.open(nodeFs, p, expect)).close()
    // An empty operation id and a zero-sized volume work too.
    const q = fresh()
    await (await PersistentMap.create(nodeFs, q, {kind: 'delta', extentSize: EXTENT, volumeSize: 0, extentCount: 0, operationId: ''})).close()
    assert.equal((await fsp.stat(q)).size, PAGE)
    const z = await PersistentMap.open(nodeFs, q, {kind: 'delta', extentSize: EXTENT, volumeSize: 0, operationId: ''})
    assert.equal(z.bits.count, 0)
    await z.close()
  })

  test('create refuses a header no map may carry (RangeError)', async () => {
    await assert.rejects(PersistentMap.create(nodeFs, fresh(), {...header, extentCount: COUNT + 1}), RangeError)
    await assert.rejects(PersistentMap.create(nodeFs, fresh(), {...header, operationId: 'x'.repeat(65)}), RangeError)
    await assert.rejects(PersistentMap.create(nodeFs, fresh(), {...header, operationId: 'é'}), RangeError)
    await assert.rejects(PersistentMap.create(nodeFs, fresh(), header, new ExtentBitmap(COUNT - 1)), RangeError)
  })

  test('a 64-byte operation id fills its field and round-trips', async () => {
    const p = fresh()
    const id = 'a'.repeat(64)
    await (await PersistentMap.create(nodeFs, p, {...header, operationId: id})).close()
    const r = await PersistentMap.open(nodeFs, p, {...expect, operationId: id})
    assert.equal(r.header.operationId, id)
    await r.close()
  })

  test('a truncated file is refused, never read as empty: header short, bitmap short, empty', async () => {
    for (const size of [100, PAGE - 1, PAGE, PAGE + PAGE + 10, 3 * PAGE - 1, 0]) {
      const p = fresh()
      await (await PersistentMap.create(nodeFs, p, header)).close()
      await fsp.truncate(p, size)
      await openRejects(p, expect, /truncated/)
    }
  })

  test('a flipped header byte fails the CRC32C check, naming the file', async () => {
    for (const at of [17, 30, 41, 100, 104]) {
      const p = fresh()
      await (await PersistentMap.create(nodeFs, p, header)).close()
      const raw = await fsp.readFile(p)
      await patch(p, at, Buffer.from([raw[at] ^ 0x10]))
      await openRejects(p, expect, /checksum/)
    }
  })

  test('bad magic and an unknown version are refused', async () => {
    const p = fresh()
    await (await PersistentMap.create(nodeFs, p, header)).close()
    await patch(p, 0, Buffer.from('NOTAMAP!'))
    await openRejects(p, expect, /bad magic/)
    const q = fresh()
    await (await PersistentMap.create(nodeFs, q, header)).close()
    await patch(q, 8, u32(3), true)
    await openRejects(q, expect, /unknown version 3/)
    const k = fresh()
    await (await PersistentMap.create(nodeFs, k, header)).close()
    await patch(k, 12, u32(7), true)
    await openRejects(k, expect, /unknown kind 7/)
  })

  test('a missing file is refused', async () => {
    const p = join(dir, 'nope.map')
    await openRejects(p, expect, /missing/)
    await assert.rejects(PersistentMap.open(nodeFs, p, {...expect, kind: 'protected'}), (e: unknown) => e instanceof CorruptStateError && /restore GROUP --force/.test(e.fix ?? ''))
  })

  test('wrong kind, extent size, volume size, extent count or operation id is refused with both values', async () => {
    const p = fresh()
    await (await PersistentMap.create(nodeFs, p, header)).close()
    await openRejects(p, {...expect, kind: 'protected'}, /is a delta map, expected a protected restore map/, /restore GROUP --force/)
    await openRejects(p, {...expect, extentSize: EXTENT * 2}, new RegExp(`: extent size ${EXTENT} does not match the group's ${EXTENT * 2}$`))
    await openRejects(p, {...expect, volumeSize: VOLUME + EXTENT}, new RegExp(`volume size ${VOLUME} does not match the group's ${VOLUME + EXTENT}`))
    await openRejects(p, {...expect, operationId: 'op-other'}, /belongs to operation "op-1234", not to the group's operation "op-other"/)
    // A protected map opened as a delta map.
    const q = fresh()
    await (await PersistentMap.create(nodeFs, q, {...header, kind: 'protected'})).close()
    await openRejects(q, expect, /is a protected restore map \(P\), expected a delta map/)
    // A header whose extent count disagrees with its sizes (CRC intact).
    const c = fresh()
    await (await PersistentMap.create(nodeFs, c, header)).close()
    await patch(c, 32, u64(COUNT + 1), true)
    await openRejects(c, expect, new RegExp(`extent count ${COUNT + 1} does not match the ${COUNT} extents`))
  })
})

describe('PersistentMap.inMemory: the stand-in for a damaged map', () => {
  test('given an all-set bitmap, when held in memory, then it reads all set, commits and closes, and no file is made', async () => {
    const all = new ExtentBitmap(COUNT)
    all.setAll()
    const p = fresh()
    const m = PersistentMap.inMemory(p, header, all)
    all.clear(0)
    assert.ok(m.get(0), 'inMemory copies the initial bitmap')
    assert.ok(m.bits.allSet(1, COUNT))
    assert.deepEqual(m.header, header)
    assert.equal(m.damageReport(), undefined)
    // A checkpoint and a durable set run their page writes and datasyncs against memory.
    m.clear(5, 40_000)
    await m.commitCheckpoint(m.beginCheckpoint())
    await m.setDurable(7, 9)
    assert.equal(m.commits, 2)
    assert.equal(m.get(5), false)
    assert.ok(m.get(7) && m.get(8) && !m.get(9))
    await m.close()
    assert.equal(await nodeFs.exists(p), false, 'an in-memory map never touches the disk')
    assert.throws(() => PersistentMap.inMemory(p, {...header, extentCount: COUNT + 1}, all), RangeError)
  })
})

describe('PersistentMap: what survives a reopen', () => {
  test('setDurable is on disk when it resolves', async () => {
    const p = fresh()
    const m = await PersistentMap.create(nodeFs, p, header)
    await m.setDurable(5, 9)
    await m.setDurable(COUNT - 2, COUNT)
    await m.setDurable(32760, 32770) // crosses the page boundary
    assert.ok(m.get(5) && m.get(8) && !m.get(9))
    // Reopen while the first handle is still open (what a crash would leave on disk).
    const r = await reopen(p)
    assert.deepEqual([...r.bits.runs()], [[5, 9], [32760, 32770], [COUNT - 2, COUNT]])
    await r.close()
    await m.close()
  })

  test('setDurable sets memory at once and resolves only after the datasync', async () => {
    const p = fresh()
    const probe = new ProbeFs(nodeFs)
    const m = await PersistentMap.create(probe, p, header)
    const release = probe.holdSyncs()
    const w = m.setDurable(100, 101)
    assert.ok(m.get(100), 'set in memory before any I/O')
    assert.equal(await settled(w), false, 'not resolved while the datasync is held')
    // A second write to the same extent must not overtake the first one's set ahead.
    const again = m.setDurable(100, 101)
    assert.equal(await settled(again), false, 'the same bit, set in the image but not yet synced, waits too')
    release()
    await Promise.all([w, again])
    assert.equal(probe.syncsOf(p), 1)
    // Now on disk: no I/O at all.
    await m.setDurable(100, 101)
    assert.equal(probe.syncsOf(p), 1, 'already durable: resolved without a commit')
    await m.close()
  })

  test('setDurableOrDone: nothing to wait for (undefined) only once the bits are on disk; while their commit is in flight, that commit', async () => {
    const p = fresh()
    const probe = new ProbeFs(nodeFs)
    const m = await PersistentMap.create(probe, p, header)
    const release = probe.holdSyncs()
    const w = m.setDurableOrDone(200, 202)
    assert.ok(w, 'bits not yet on disk: a commit to wait for')
    assert.ok(m.get(200) && m.get(201), 'set in memory at once')
    assert.equal(await settled(w), false, 'not resolved while the datasync is held')
    // Recipe 1: a second write to the same extents must not overtake the first's set ahead.
    const again = m.setDurableOrDone(201, 202)
    assert.ok(again, 'set in the image, not yet synced: waits for that commit')
    assert.equal(await settled(again), false)
    release()
    await Promise.all([w, again])
    assert.equal(m.setDurableOrDone(200, 202), undefined, 'durable: nothing to wait for')
    assert.equal(m.setDurableOrDone(5, 5), undefined, 'an empty range')
    assert.equal(probe.syncsOf(p), 1)
    m.clear(200, 201)
    const cleared = m.setDurableOrDone(200, 201)
    assert.equal(cleared, undefined, 'cleared in memory only (not checkpointed): still set on disk')
    await m.close()
    await assert.rejects(m.setDurableOrDone(300, 301)!, 'closed: a rejection, never undefined')
  })

  test('clear without a checkpoint is not on disk; with beginCheckpoint + commitCheckpoint it is', async () => {
    const p = fresh()
    const m = await PersistentMap.create(nodeFs, p, header)
    await m.setDurable(10, 20)
    m.clear(10, 15)
    assert.equal(m.get(10), false, 'cleared in memory at once')
    assert.ok(m.hasPendingWork())
    assert.deepEqual(await onDisk(p), [[10, 20]], 'a clear without a checkpoint is not on disk')
    const t = m.beginCheckpoint()
    assert.equal(t.empty, false)
    assert.ok(m.hasPendingWork(), 'a ticket not yet committed is pending work')
    assert.deepEqual(await onDisk(p), [[10, 20]], 'taking a ticket writes nothing')
    await m.commitCheckpoint(t)
    assert.equal(m.hasPendingWork(), false)
    assert.deepEqual(await onDisk(p), [[15, 20]], 'the checkpointed clear is on disk')
    const r = await reopen(p)
    assert.deepEqual([...r.bits.runs()], [[15, 20]])
    await r.close()
    await m.close()
  })

  test('a set-ahead commit writes its page from the durable image, not from memory (an uncheckpointed clear stays set on disk)', async () => {
    const p = fresh()
    const m = await PersistentMap.create(nodeFs, p, header)
    await m.setDurable(40, 41)
    m.clear(40, 41) // copied, but the copy is not yet flushed
    await m.setDurable(41, 42) // same page
    assert.deepEqual(await onDisk(p), [[40, 42]])
    await m.close()
  })

  test('given a bit cleared before a ticket, when it is set after the ticket and cleared again, then that ticket does not make it durably clear', async () => {
    const p = fresh()
    const m = await PersistentMap.create(nodeFs, p, header)
    await m.setDurable(0, 8)
    m.clear(0, 8) // first copies done
    const t = m.beginCheckpoint()
    // Host writes dirty 3 (delta map: set ahead) and 4 (volatile) again after the ticket ...
    await m.setDurable(3, 4)
    m.setVolatile(4, 5)
    // ... and second copies clear them again, but their data is not flushed by t's caller.
    m.clear(3, 5)
    // t's caller fdatasyncs the volumes, then:
    await m.commitCheckpoint(t)
    assert.deepEqual(await onDisk(p), [[3, 5]], 'only the clears not undone since the ticket became durable')
    // The next checkpoint covers the second copies.
    await m.commitCheckpoint(m.beginCheckpoint())
    assert.deepEqual(await onDisk(p), [])
    await m.close()
  })

  test('a bit set again after the ticket and still set is not durably cleared either', async () => {
    const p = fresh()
    const m = await PersistentMap.create(nodeFs, p, header)
    await m.setDurable(0, 4)
    m.clear(0, 4)
    const t = m.beginCheckpoint()
    await m.setDurable(1, 2)
    await m.commitCheckpoint(t)
    assert.deepEqual(await onDisk(p), [[1, 2]])
    await m.close()
  })

  test('setVolatile is not on disk until staged and checkpointed; stage takes only the bits set then', async () => {
    const p = fresh()
    const m = await PersistentMap.create(nodeFs, p, {...header, kind: 'protected'})
    m.setVolatile(100, 102)
    await m.commitCheckpoint(m.beginCheckpoint())
    assert.deepEqual(await onDisk(p), [], 'not staged: not written')
    m.stage(100, 102) // the host's data write completed
    m.stage(90, 110) // a wider stage does not pick up bits set later ...
    m.setVolatile(105, 106) // ... like this write still in progress
    const t = m.beginCheckpoint()
    m.setVolatile(107, 108) // nor bits set after the ticket
    await m.commitCheckpoint(t)
    assert.deepEqual(await onDisk(p), [[100, 102]])
    assert.ok(m.get(105) && m.get(107), 'still set (and blocking copies) in memory')
    m.stage(105, 106)
    m.stage(107, 108)
    await m.commitCheckpoint(m.beginCheckpoint())
    assert.deepEqual(await onDisk(p), [[100, 102], [105, 106], [107, 108]])
    await m.close()
  })

  test('a bit staged, cleared and set volatile again is not eligible until staged again', async () => {
    const p = fresh()
    const m = await PersistentMap.create(nodeFs, p, header)
    m.setVolatile(7, 8)
    m.stage(7, 8)
    const t = m.beginCheckpoint()
    m.clear(7, 8)
    m.setVolatile(7, 8) // a new write, data not yet written
    await m.commitCheckpoint(t)
    assert.deepEqual(await onDisk(p), [])
    m.stage(7, 8)
    await m.commitCheckpoint(m.beginCheckpoint())
    assert.deepEqual(await onDisk(p), [[7, 8]])
    // The same before any ticket was taken.
    m.setVolatile(9, 10)
    m.stage(9, 10)
    m.clear(9, 10)
    m.setVolatile(9, 10)
    await m.commitCheckpoint(m.beginCheckpoint())
    assert.deepEqual(await onDisk(p), [[7, 8]])
    await m.close()
  })

  test('a ticket never committed (a failed checkpoint) loses nothing: the next ticket carries its work', async () => {
    const p = fresh()
    const probe = new ProbeFs(nodeFs)
    const m = await PersistentMap.create(probe, p, {...header, kind: 'protected'})
    await m.setDurable(0, 2)
    m.clear(0, 1)
    m.setVolatile(50, 51)
    m.stage(50, 51)
    const lost = m.beginCheckpoint() // its volume flush fails; it is never committed
    assert.ok(m.hasPendingWork())
    const next = m.beginCheckpoint()
    await m.commitCheckpoint(next)
    assert.deepEqual(await onDisk(p), [[1, 2], [50, 51]])
    assert.equal(m.hasPendingWork(), false)
    const syncs = probe.syncsOf(p)
    await m.commitCheckpoint(lost) // retired by the newer commit: does nothing
    assert.equal(probe.syncsOf(p), syncs)
    await m.close()
  })

  test('a ticket of another map is refused', async () => {
    const a = await PersistentMap.create(nodeFs, fresh(), header)
    const b = await PersistentMap.create(nodeFs, fresh(), header)
    const t: CheckpointTicket = a.beginCheckpoint()
    await assert.rejects(b.commitCheckpoint(t), /checkpoint ticket of map/)
    await Promise.all([a.close(), b.close()])
  })

  test('replaceAll makes memory and disk equal the new bitmap, retiring pending clears and tickets', async () => {
    const p = fresh()
    const probe = new ProbeFs(nodeFs)
    const m = await PersistentMap.create(probe, p, header)
    await m.setDurable(0, 1000)
    m.clear(0, 500)
    const t = m.beginCheckpoint()
    const next = new ExtentBitmap(COUNT)
    next.setRange(7, 9)
    next.set(33000)
    const before = probe.syncsOf(p)
    await m.replaceAll(next)
    assert.equal(probe.syncsOf(p), before + 1, 'one datasync for the whole bitmap')
    assert.ok(m.bits.equals(next))
    next.clear(7)
    assert.ok(m.get(7), 'replaceAll copies its argument')
    next.set(7)
    assert.equal(m.hasPendingWork(), false)
    await m.commitCheckpoint(t) // an old ticket must not change anything any more
    assert.equal(probe.syncsOf(p), before + 1)
    assert.deepEqual(await onDisk(p), [[7, 9], [33000, 33001]])
    const r = await reopen(p)
    assert.ok(r.bits.equals(next))
    await r.close()
    // "All bits set" recovery.
    const all = new ExtentBitmap(COUNT)
    all.setAll()
    await m.replaceAll(all)
    assert.deepEqual(await onDisk(p), [[0, COUNT]])
    await m.close()
  })

  test('a setDurable made while replaceAll is queued stays durable after it', async () => {
    const p = fresh()
    const probe = new ProbeFs(nodeFs)
    const m = await PersistentMap.create(probe, p, header)
    await m.setDurable(5, 6)
    const release = probe.holdSyncs()
    const busy = m.setDurable(900, 901) // a commit in flight, so what follows queues
    await ticks()
    const queued = m.setDurable(901, 902) // a batch waiting for its turn
    const replaced = m.replaceAll(new ExtentBitmap(COUNT))
    const late = m.setDurable(5, 6) // durable before the replace: it must not take the fast path
    release()
    await Promise.all([busy, queued, replaced, late])
    assert.deepEqual([...m.bits.runs()], [[5, 6]])
    assert.deepEqual(await onDisk(p), [[5, 6]])
    await m.close()
  })
})

describe('PersistentMap: group commit', () => {
  test('200 concurrent setDurable calls on distinct bits cost far fewer than 200 datasyncs', async () => {
    const p = fresh()
    const probe = new ProbeFs(nodeFs)
    const m = await PersistentMap.create(probe, p, header)
    const bits = Array.from({length: 200}, (_, i) => i * 197) // spread over both bitmap pages
    await Promise.all(bits.map((e) => m.setDurable(e, e + 1)))
    const used = probe.syncsOf(p)
    assert.ok(used >= 1 && used <= 2, `200 setDurable calls took ${used} datasyncs of the map file`)
    // Already durable: no new commit.
    await Promise.all(bits.map((e) => m.setDurable(e, e + 1)))
    assert.equal(probe.syncsOf(p), used)
    const r = await reopen(p)
    assert.equal(r.bits.countSet(), 200)
    for (const e of bits) assert.ok(r.get(e), `bit ${e} durable`)
    await r.close()
    await m.close()
  })

  test('callers arriving one by one while a commit is in flight share the next commit', async () => {
    const p = fresh()
    const probe = new ProbeFs(nodeFs)
    const m = await PersistentMap.create(probe, p, header)
    const release = probe.holdSyncs()
    const first = m.setDurable(0, 1)
    await ticks()
    const rest: Array<Promise<void>> = []
    for (let i = 1; i <= 200; i++) {
      rest.push(m.setDurable(i * 150, i * 150 + 1))
      if (i % 20 === 0) await ticks(1) // arrive over many event-loop turns
    }
    release()
    await Promise.all([first, ...rest])
    assert.equal(probe.syncsOf(p), 2, 'one commit in flight, one for everyone who came during it')
    assert.equal((await reopen(p).then(async (r) => [r.bits.countSet(), await r.close()]))[0], 201)
    await m.close()
  })

  test('close waits for the commits in flight', async () => {
    const p = fresh()
    const probe = new ProbeFs(nodeFs)
    const m = await PersistentMap.create(probe, p, header)
    const release = probe.holdSyncs()
    const w = m.setDurable(3, 4)
    const closed = m.close()
    assert.equal(await settled(closed), false)
    await assert.rejects(m.setDurable(10, 11), /closed/)
    release()
    await Promise.all([w, closed])
    assert.deepEqual(await onDisk(p), [[3, 4]])
  })
})

describe('PersistentMap: a failed write', () => {
  test('a failed datasync rejects with an I/O error naming the file, and the map never claims durability again', async () => {
    const p = fresh()
    const probe = new ProbeFs(nodeFs)
    const m = await PersistentMap.create(probe, p, header)
    await m.setDurable(1, 2)
    probe.failWith = 'EIO'
    await assert.rejects(m.setDurable(2, 3), (e: unknown) => e instanceof VolumeIoError && e.errno === 'EIO' && e.message.includes(p))
    probe.failWith = undefined
    await assert.rejects(m.setDurable(1, 2), VolumeIoError, 'even a bit durable before the failure')
    await assert.rejects(m.setDurable(5, 6), VolumeIoError)
    m.clear(1, 2)
    await assert.rejects(m.commitCheckpoint(m.beginCheckpoint()), VolumeIoError)
    await m.close()
  })
})

describe('PersistentMap against a model (fast-check): memory and disk after every call', () => {
  const N = 32768 + 100 // two bitmap pages
  const h: MapHeader = {kind: 'protected', extentSize: 4096, volumeSize: N * 4096 - 5, extentCount: N, operationId: 'model'}
  // Indices 0..399 map near 0 and near the page boundary at 32768 (ranges cross it).
  const at = (i: number): number => (i < 200 ? i : N - 400 + i)
  const range = fc.tuple(fc.integer({min: 0, max: 400}), fc.integer({min: 0, max: 400})).map(([a, b]) => [at(Math.min(a, b)), at(Math.max(a, b))] as const)
  type Op =
    | {op: 'setDurable' | 'setVolatile' | 'stage' | 'clear'; r: readonly [number, number]}
    | {op: 'begin'}
    | {op: 'commit' | 'abandon'; k: number}
    | {op: 'replaceAll'; r: readonly [number, number]}
  const op: fc.Arbitrary<Op> = fc.oneof(
    {weight: 3, arbitrary: fc.record({op: fc.constantFrom('setDurable' as const, 'setVolatile' as const, 'stage' as const, 'clear' as const), r: range})},
    {weight: 2, arbitrary: fc.constant({op: 'begin' as const})},
    {weight: 2, arbitrary: fc.record({op: fc.constant('commit' as const), k: fc.nat(4)})},
    {weight: 1, arbitrary: fc.record({op: fc.constant('abandon' as const), k: fc.nat(4)})},
    {weight: 1, arbitrary: fc.record({op: fc.constant('replaceAll' as const), r: range})},
  )

  interface ModelTicket {
    sets: Set<number>
    clears: Set<number>
    open: boolean
    real: CheckpointTicket
  }

  test('random call sequences (abandoned tickets too)', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(op, {maxLength: 30}), async (ops) => {
        const p = fresh()
        const m = await PersistentMap.create(nodeFs, p, h)
        const mem = new Uint8Array(N)
        const disk = new Uint8Array(N)
        let staged = new Set<number>()
        let cleared = new Set<number>()
        let tickets: ModelTicket[] = []
        const noteSet = (i: number): void => {
          cleared.delete(i)
          for (const t of tickets) t.clears.delete(i)
        }
        try {
          for (const o of ops) {
            switch (o.op) {
              case 'setDurable':
                await m.setDurable(o.r[0], o.r[1])
                for (let i = o.r[0]; i < o.r[1]; i++) {
                  mem[i] = disk[i] = 1
                  noteSet(i)
                }
                break
              case 'setVolatile':
                m.setVolatile(o.r[0], o.r[1])
                for (let i = o.r[0]; i < o.r[1]; i++) {
                  if (!mem[i]) {
                    staged.delete(i)
                    for (const t of tickets) t.sets.delete(i)
                  }
                  mem[i] = 1
                  noteSet(i)
                }
                break
              case 'stage':
                m.stage(o.r[0], o.r[1])
                for (let i = o.r[0]; i < o.r[1]; i++) if (mem[i]) staged.add(i)
                break
              case 'clear':
                m.clear(o.r[0], o.r[1])
                for (let i = o.r[0]; i < o.r[1]; i++) {
                  mem[i] = 0
                  cleared.add(i)
                }
                break
              case 'begin': {
                const t: ModelTicket = {sets: new Set(staged), clears: new Set(cleared), open: true, real: m.beginCheckpoint()}
                for (const old of tickets) {
                  for (const i of old.sets) t.sets.add(i)
                  for (const i of old.clears) t.clears.add(i)
                }
                staged = new Set()
                cleared = new Set()
                tickets.push(t)
                break
              }
              case 'commit': {
                if (tickets.length === 0) break
                const idx = o.k % tickets.length
                const t = tickets[idx]
                await m.commitCheckpoint(t.real)
                for (const i of t.sets) if (mem[i]) disk[i] = 1
                for (const i of t.clears) if (!mem[i]) disk[i] = 0
                tickets = tickets.slice(idx + 1)
                break
              }
              case 'abandon': {
                // Its volume flush failed: its clears are set again and staged, with its sets.
                if (tickets.length === 0) break
                const idx = o.k % tickets.length
                const t = tickets[idx]
                m.abandonCheckpoint(t.real)
                tickets = tickets.slice(idx + 1)
                for (const i of t.clears) {
                  mem[i] = 1
                  staged.add(i)
                  cleared.delete(i)
                  for (const newer of tickets) newer.clears.delete(i)
                }
                for (const i of t.sets) staged.add(i)
                break
              }
              case 'replaceAll': {
                const b = new ExtentBitmap(N)
                b.setRange(o.r[0], o.r[1])
                await m.replaceAll(b)
                mem.fill(0)
                mem.fill(1, o.r[0], o.r[1])
                disk.set(mem)
                staged = new Set()
                cleared = new Set()
                tickets = []
                break
              }
            }
            const want = new ExtentBitmap(N)
            const wantDisk = new ExtentBitmap(N)
            for (let i = 0; i < N; i++) {
              if (mem[i]) want.set(i)
              if (disk[i]) wantDisk.set(i)
            }
            assert.ok(m.bits.equals(want), `memory after ${JSON.stringify(o)}`)
            assert.deepEqual(await onDisk(p, N), [...wantDisk.runs()], `disk after ${JSON.stringify(o)}`)
            assert.equal(m.hasPendingWork(), staged.size + cleared.size > 0 || tickets.some((t) => t.sets.size + t.clears.size > 0), 'hasPendingWork')
          }
        } finally {
          await m.close()
        }
        const r = await PersistentMap.open(nodeFs, p, {kind: 'protected', extentSize: 4096, volumeSize: h.volumeSize, operationId: 'model'})
        const wantDisk = new ExtentBitmap(N)
        disk.forEach((v, i) => v && wantDisk.set(i))
        assert.ok(r.bits.equals(wantDisk), 'reopened: the disk image')
        await r.close()
        await fsp.rm(p)
      }),
      {numRuns: 60},
    )
  })
})

/** File offset of the slot holding page p's current image: the one whose sector 0 has the higher seq. */
async function currentSlot(path: string, p: number): Promise<number> {
  const raw = await fsp.readFile(path)
  const at = (s: number): number => PAGE + (2 * p + s) * PAGE
  return raw.readBigUInt64LE(at(0)) >= raw.readBigUInt64LE(at(1)) ? at(0) : at(1)
}

async function flip(path: string, at: number, mask = 0x08): Promise<void> {
  const raw = await fsp.readFile(path)
  await patch(path, at, Buffer.from([raw[at] ^ mask]))
}

describe('PersistentMap: every page is verifiable (format version 2)', () => {
  test('given a D bit cleared by hand in its page\'s current slot (header intact), then open takes every extent of that page as dirty, reports it, and repairs it on disk', async () => {
    const p = fresh()
    const m = await PersistentMap.create(nodeFs, p, header)
    await m.setDurable(3, 4) // page 0, payload byte 0, bit 3
    await m.setDurable(32005, 32006) // page 1
    await m.close()
    const cur = await currentSlot(p, 0)
    await flip(p, cur + 12) // clear extent 3's bit; the CRC32C of sector 0 no longer matches
    const before = await fsp.readFile(p)
    // status opens read-only: the damage is seen, nothing is written.
    const ro = await PersistentMap.open(nodeFs, p, expect, {readOnly: true})
    assert.deepEqual(ro.damagedPages, [0])
    assert.deepEqual([...ro.bits.runs()], [[0, 32000], [32005, 32006]])
    await assert.rejects(ro.setDurable(7, 8), /read-only/)
    await ro.close()
    assert.ok((await fsp.readFile(p)).equals(before), 'a read-only open writes nothing')

    const r = await reopen(p)
    assert.deepEqual(r.damagedPages, [0])
    assert.deepEqual([...r.bits.runs()], [[0, 32000], [32005, 32006]], 'page 0 all dirty, page 1 as it was')
    const report = r.damageReport() ?? ''
    assert.ok(report.includes(p), report)
    assert.match(report, /page 0 \(extents 0-31999\) failed its checksum; every extent of it is taken as different/)
    await r.close()
    assert.deepEqual(await onDisk(p), [[0, 32000], [32005, 32006]], 'repaired on disk: both slots of page 0 valid and all set')
    const again = await reopen(p)
    assert.deepEqual(again.damagedPages, [], 'no damage after the repair')
    assert.equal(again.damageReport(), undefined)
    assert.deepEqual([...again.bits.runs()], [[0, 32000], [32005, 32006]])
    // And it goes on working: the next commit of page 0 lands in the other slot.
    again.clear(0, 10)
    await again.commitCheckpoint(again.beginCheckpoint())
    await again.close()
    const last = await reopen(p)
    assert.deepEqual([...last.bits.runs()], [[10, 32000], [32005, 32006]])
    assert.deepEqual(last.damagedPages, [])
    await last.close()
  })

  test('damage a checksum cannot miss: a flipped seq, a flipped CRC, a zeroed slot, a misdirected sector; and stale rot in the older slot is ignored', async () => {
    const cases: Array<[string, (cur: number, old: number) => Promise<void>, boolean]> = [
      ['a seq bit of one sector of the current slot (it must not pass for a torn write)', (cur) => flip(`${pathOf}`, cur + 3 * 512, 0x02), true],
      ['the CRC of the last sector of the current slot', (cur) => flip(`${pathOf}`, cur + 7 * 512 + 9, 0x01), true],
      ['the current slot zeroed', (cur) => patch(`${pathOf}`, cur, Buffer.alloc(PAGE)), true],
      [
        'a sector of the older slot written over the same sector of the current slot (a misdirected write must not pass for a torn one)',
        async (cur, old) => patch(pathOf, cur + 2 * 512, (await fsp.readFile(pathOf)).subarray(old + 2 * 512, old + 3 * 512)),
        true,
      ],
      ['a payload byte of the older slot', (_cur, old) => flip(`${pathOf}`, old + 600), false],
      ['the older slot zeroed', (_cur, old) => patch(`${pathOf}`, old, Buffer.alloc(PAGE)), true],
    ]
    let pathOf = ''
    for (const [what, damage, unknown] of cases) {
      pathOf = fresh()
      const m = await PersistentMap.create(nodeFs, pathOf, header)
      await m.setDurable(100, 101)
      await m.setDurable(200, 201) // page 0 committed twice: slots at seq 2 and 3
      await m.close()
      const cur = await currentSlot(pathOf, 0)
      const old = cur === PAGE ? 2 * PAGE : PAGE
      await damage(cur, old)
      const r = await reopen(pathOf)
      if (unknown) {
        assert.deepEqual(r.damagedPages, [0], what)
        assert.ok(r.bits.allSet(0, 32000), what)
      } else {
        assert.deepEqual(r.damagedPages, [], what)
        assert.deepEqual([...r.bits.runs()], [[100, 101], [200, 201]], what)
      }
      await r.close()
    }
  })

  test('a damaged P page stops open with a CorruptStateError naming the file and the page, and the fix; damaged: "clear" reads it clear for the caller to cover and repair', async () => {
    const p = fresh()
    const ph: MapHeader = {...header, kind: 'protected'}
    const pe: MapExpectation = {...expect, kind: 'protected', operationId: ph.operationId}
    const m = await PersistentMap.create(nodeFs, p, ph)
    for (const [s, e] of [
      [3, 4],
      [32001, 32003],
    ]) {
      m.setVolatile(s, e)
      m.stage(s, e)
    }
    await m.commitCheckpoint(m.beginCheckpoint())
    await m.close()
    await flip(p, (await currentSlot(p, 1)) + 100)
    await assert.rejects(PersistentMap.open(nodeFs, p, pe), (error: unknown) => {
      assert.ok(error instanceof CorruptStateError)
      assert.equal(error.exitCode, 7)
      assert.ok(error.message.includes(p))
      assert.match(error.message, /page 1 \(extents 32000 to 40000\) cannot be trusted: slot 0 valid at seq 1, slot 1 damaged \(claims seq 2\); no safe value exists for P bits/)
      assert.match(error.fix ?? '', /restore GROUP --force/)
      return true
    })
    const r = await PersistentMap.open(nodeFs, p, pe, {damaged: 'clear'})
    assert.deepEqual(r.damagedPages, [1])
    assert.deepEqual([...r.bits.runs()], [[3, 4]], 'page 1 read as clear, page 0 intact')
    assert.match(r.damageReport() ?? '', /page 1 \(extents 32000-40000\) failed its checksum; its extents are copied from the clone again/)
    await assert.rejects(PersistentMap.open(nodeFs, p, pe), CorruptStateError, 'nothing written before repairDamagedPages')
    await r.repairDamagedPages()
    await r.close()
    const again = await PersistentMap.open(nodeFs, p, pe)
    assert.deepEqual([...again.bits.runs()], [[3, 4]])
    await again.close()
  })

  test('a version-1 file (one trusted copy per page) is read as before and converted to version 2 atomically; read-only leaves it alone', async () => {
    const p = fresh()
    const init = new ExtentBitmap(COUNT)
    for (const [s, e] of [
      [0, 5],
      [32767, 32770],
      [COUNT - 1, COUNT],
    ])
      init.setRange(s, e)
    // The previous release's layout: header (version 1), then the bitmap padded to 4096-byte pages.
    const v1 = Buffer.alloc(PAGE + 2 * PAGE)
    encodeHeader(header).copy(v1, 0)
    v1.writeUInt32LE(1, 8)
    v1.writeUInt32LE(crc32c(v1.subarray(0, 104)), 104)
    Buffer.from(init.toBytes()).copy(v1, PAGE)
    await fsp.writeFile(p, v1)
    const ro = await PersistentMap.open(nodeFs, p, expect, {readOnly: true})
    assert.ok(ro.bits.equals(init))
    await ro.close()
    assert.ok((await fsp.readFile(p)).equals(v1), 'read-only: still version 1')
    const r = await reopen(p)
    assert.ok(r.bits.equals(init))
    assert.deepEqual(r.damagedPages, [])
    await r.setDurable(10, 11)
    await r.close()
    const raw = await fsp.readFile(p)
    assert.equal(raw.readUInt32LE(8), 2, 'converted to version 2')
    assert.equal(raw.length, mapFileSize(COUNT))
    assert.deepEqual(await onDisk(p), [[0, 5], [10, 11], [32767, 32770], [COUNT - 1, COUNT]])
    assert.deepEqual((await fsp.readdir(dir)).filter((f) => f.includes('.tmp-')), [], 'no temp file left')
  })
})

describe('PersistentMap: a torn slot on disk', () => {
  test('given an interrupted write left half a slot at seq n+1, then open falls back to the slot at seq n, and the next commit uses a seq above n+1 (an interrupted write\'s sectors can never pass for a later image)', async () => {
    const p = fresh()
    const m = await PersistentMap.create(nodeFs, p, header)
    await m.setDurable(1, 2) // page 0: slot 1 at seq 2 is current, slot 0 at seq 1
    await m.close()
    const raw = await fsp.readFile(p)
    const seqAt = (slot: number, sector = 0): number => Number(raw.readBigUInt64LE(PAGE + slot * PAGE + sector * 512))
    assert.equal(seqAt(1), 2)
    // The next commit (extent 8 set, say) was writing slot 0 at seq 3 and only its first 4 sectors landed.
    const next = new ExtentBitmap(COUNT)
    next.setRange(1, 2)
    next.setRange(8, 9)
    const img = Buffer.alloc(PAGE)
    encodeSlot(next, 0, 0, 3, img)
    await patch(p, PAGE, img.subarray(0, 4 * 512))
    const r = await reopen(p)
    assert.deepEqual(r.damagedPages, [], 'a torn slot is not damage')
    assert.deepEqual([...r.bits.runs()], [[1, 2]], 'the image before the interrupted commit')
    await r.setDurable(20, 21)
    await r.close()
    const after = await fsp.readFile(p)
    for (let k = 0; k < 8; k++) assert.equal(Number(after.readBigUInt64LE(PAGE + k * 512)), 4, `slot 0 sector ${k}: seq 4, not 3 again`)
    assert.deepEqual(await onDisk(p), [[1, 2], [20, 21]])
  })
})
