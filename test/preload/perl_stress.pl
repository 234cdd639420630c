# Hashes, arrays, strings and regexes for the preload harness; deterministic
# output (run with PERL_HASH_SEED=0 PERL_PERTURB_KEYS=0; keys are sorted anyway).
use strict;
use warnings;

my %h;
for my $i (0 .. 99_999) {
    $h{"k$i"} = { n => $i, s => ("ab" x ($i % 17)) . $i, l => [ 1 .. ($i % 9) ] };
}
delete $h{"k$_"} for grep { $_ % 4 == 0 } 0 .. 99_999;
my ($sum, $len) = (0, 0);
for my $k (sort keys %h) {
    $sum += $h{$k}{n};
    $len += length($h{$k}{s}) + scalar @{ $h{$k}{l} };
}
print "hash: ", scalar(keys %h), " sum=$sum len=$len\n";

my $text = join ",", map { sprintf "%06d:%s", $_, "x" x ($_ % 23) } 1 .. 50_000;
my @fields = split /,/, $text;
my $matches = () = $text =~ /(\d{6}):x{20,}/g;
(my $copy = $text) =~ s/x+/Y/g;
print "text: ", length($text), " fields=", scalar(@fields), " matches=$matches copy=", length($copy), "\n";

my @sorted = sort { $b->[1] <=> $a->[1] or $a->[0] cmp $b->[0] }
             map { [ $_, (length($_) * 7919) % 1009 ] } @fields[0 .. 9999];
print "sorted: $sorted[0][0] $sorted[-1][0]\n";

my %count;
$count{ substr($_, 0, 3) }++ for @fields;
print "buckets: ", join(" ", map { "$_=$count{$_}" } (sort keys %count)[0 .. 4]), "\n";

my $s = "";
$s .= chr(97 + $_ % 26) for 1 .. 200_000;
my $rev = reverse $s;
print "concat: ", length($s), " ", substr($rev, 0, 10), "\n";
undef %h;
print "ok\n";
