import assert from 'node:assert/strict'
import {describe, test} from 'node:test'
import {PayloadBudget} from '../../src/nbd/PayloadBudget.js'

const MiB = 1024 * 1024

describe('PayloadBudget (payload bytes across connections)', () => {
  test('given a 256 MiB budget, when 32 MiB requests arrive, then eight fit and the ninth waits until one is given back', () => {
    const b = new PayloadBudget(256 * MiB, 32 * MiB, 4 * MiB)
    for (let i = 0; i < 8; i++) assert.equal(b.take(32 * MiB, i === 0 ? 0 : 32 * MiB), 'main')
    assert.equal(b.take(32 * MiB, 32 * MiB), undefined)
    let woken = 0
    b.wait(() => woken++)
    assert.equal(b.waiting, 1)
    b.give(32 * MiB, 'main')
    assert.equal(woken, 1, 'woken once')
    assert.equal(b.waiting, 0)
    assert.equal(b.take(32 * MiB, 0), 'main')
    assert.equal(b.peak, 256 * MiB)
  })

  test('given a budget smaller than one request, then requests still go, one at a time', () => {
    const b = new PayloadBudget(1 * MiB, 0, 0)
    assert.equal(b.take(32 * MiB, 0), 'main', 'alone: let through')
    assert.equal(b.take(32 * MiB, 0), undefined, 'a second waits')
    b.give(32 * MiB, 'main')
    assert.equal(b.take(32 * MiB, 0), 'main')
  })

  test('given the main budget full, then a small request of a connection holding nothing is served from the reserve; a large one or a holder waits', () => {
    const b = new PayloadBudget(64 * MiB, 8 * MiB, 1 * MiB)
    assert.equal(b.take(64 * MiB, 0), 'main')
    assert.equal(b.take(64 * 1024, 0), 'reserve')
    assert.equal(b.take(2 * MiB, 0), undefined, 'larger than the reserve serves')
    assert.equal(b.take(64 * 1024, 64 * 1024), undefined, 'a connection already holding bytes')
    for (let i = 0; i < 7; i++) assert.equal(b.take(1 * MiB, 0), 'reserve')
    assert.equal(b.take(1 * MiB, 0), undefined, 'the reserve is full')
    b.give(64 * 1024, 'reserve')
    assert.equal(b.reserveUsed, 7 * MiB)
    assert.equal(b.used, 64 * MiB)
  })

  test('given bytes held in both parts, then onDrained runs once the last byte is given back (not before), and burst keeps the high-water mark until reset', () => {
    const b = new PayloadBudget(64 * MiB, 8 * MiB, 1 * MiB)
    let drained = 0
    b.onDrained = () => drained++
    assert.equal(b.take(64 * MiB, 0), 'main')
    assert.equal(b.take(1 * MiB, 0), 'reserve')
    b.give(64 * MiB, 'main')
    assert.equal(drained, 0, 'the reserve still holds bytes')
    b.give(1 * MiB, 'reserve')
    assert.equal(drained, 1)
    assert.equal(b.burst, 65 * MiB)
    b.burst = 0
    assert.equal(b.take(2 * MiB, 0), 'main')
    assert.equal(b.burst, 2 * MiB)
  })
})
