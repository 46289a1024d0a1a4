/**
 * Random names (src/io/randomId.ts): operation ids are version 4 UUIDs, hex names have the
 * length asked, and none repeats across pool refills. (startup.test.ts holds that a sync does not
 * load node:crypto for them.)
 */
import assert from 'node:assert/strict'
import {test} from 'node:test'
import {randomHex, randomUuid} from '../../src/io/randomId.js'

test('randomUuid gives version 4, variant 10 UUIDs, none repeated over many pool refills', () => {
  const seen = new Set<string>()
  for (let i = 0; i < 5000; i++) {
    const id = randomUuid()
    assert.match(id, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/)
    assert.ok(!seen.has(id), `repeated ${id}`)
    seen.add(id)
  }
})

test('randomHex gives 2n hex digits, for sizes across and beyond the pool', () => {
  const seen = new Set<string>()
  for (const n of [1, 6, 8, 255, 256, 257, 1000]) {
    for (let i = 0; i < 50; i++) {
      const h = randomHex(n)
      assert.equal(h.length, 2 * n)
      assert.match(h, /^[0-9a-f]+$/)
      if (n >= 6) {
        assert.ok(!seen.has(h), `repeated ${h}`)
        seen.add(h)
      }
    }
  }
  // Not all zeros (a failed read would leave the pool as allocated).
  assert.notEqual(randomHex(32), '0'.repeat(64))
})
