// The SYSREF scenario: lookups and foreach walks against termination, the
// race of ../sysref_race.hpp (shared with test_sysref_index.cpp's
// lookups_and_foreach_race_termination) as a plain executable, which is what
// the TSan flavour runs.
#include "../sysref_race.hpp"
#include "stress.hpp"

namespace stress {

// The race (see sysref_race.hpp) on more threads than CPUs, signalled and
// moved by a signaller, for 1.5 s (scaled); its threads report progress to
// the watchdog after each round of work.
void sysref_race() {
  ::sysref_race::race r;
  r.on_round = progress;
  const unsigned lookers = std::max(2u, ncpu());
  install_handler(count_signal);
  long sent, moved;
  {
    signaller sig(50us, signaller::signal_and_move);
    std::vector<std::thread> threads;
    ::sysref_race::start(r, lookers, [&](auto fn) {
      threads.emplace_back([&sig, fn] {
        sig.enroll();
        fn();
        sig.leave();
      });
    });
    std::this_thread::sleep_until(deadline(1.5));
    r.stop.store(true);
    for (auto &t : threads) t.join();
    sent = sig.sent();
    moved = sig.moved();
  }
  const ::sysref_race::snapshot after = r.end();
  const ::sysref_race::tally run = ::sysref_race::of_this_run(r, after);
  std::printf("  %u threads: %ld allocs (%ld aborted), %ld lookups (%ld hits), %ld foreach passes "
              "(%ld visits), %ld kills, %llu constructions, %llu retired; %ld signals, %ld moves\n",
              lookers + 3, r.allocs.load(), r.aborted.load(), r.lookups.load(), r.hits.load(),
              r.passes.load(), r.visits.load(), r.kills.load(), (ull)run.cls.constructions,
              (ull)run.cls.retired, sent, moved);
  g_signals_handled.store(0);
  for (const auto &k : ::sysref_race::checks(r, after)) CHECK(k.ok, "%s", k.what.c_str());
}

}  // namespace stress
